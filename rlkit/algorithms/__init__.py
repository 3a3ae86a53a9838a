"""The algorithm axes as registered components: advantage estimators (:data:`ADVANTAGES`) and policy losses
(:data:`POLICY_LOSSES`). Each built-in below is one module; importing it registers it (the one registry line).
See ``docs/extending.md``."""

from . import clipped, gae, group, gspo  # noqa: F401 (the built-ins register themselves)
from .base import AdvantageEstimator, AdvantageInputs, AdvantageOutput, PolicyLoss
from .registry import ADVANTAGES, POLICY_LOSSES, Registry

__all__ = [
    "ADVANTAGES",
    "POLICY_LOSSES",
    "AdvantageEstimator",
    "AdvantageInputs",
    "AdvantageOutput",
    "PolicyLoss",
    "Registry",
]
