"""Ray actors: they move tensors and call the pure layers; no math lives here."""

from .learner import Learner, LearnerCore
from .ppo_learner import PPOLearner, PPOLearnerCore
from .reference import ReferenceWorker
from .reward import RewardWorker
from .rollout import RolloutWorker

__all__ = ["Learner", "LearnerCore", "PPOLearner", "PPOLearnerCore", "ReferenceWorker", "RewardWorker", "RolloutWorker"]
