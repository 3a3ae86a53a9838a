"""Ray actors: they move tensors and call the pure layers; no math lives here."""

from .learner import Learner, LearnerCore
from .reference import ReferenceWorker
from .reward import RewardWorker
from .rollout import RolloutWorker

__all__ = ["Learner", "LearnerCore", "ReferenceWorker", "RewardWorker", "RolloutWorker"]
