"""Weightings of a regularizer: constant, scheduled, adaptive (target KL), and per-sample (DADS, PACED), each one
:class:`Weighting` class named from recipes as ``weighting.type`` (see :mod:`.base`).

Add one: write a small module with a :class:`Weighting` subclass (and its ``Config``), then add one
``register_weighting("name")(Class)`` line below (``docs/extending.md``).
"""

from .adaptive import Adaptive, AdaptiveWeighting
from .base import (
    Weighting,
    WeightingConfig,
    available_weightings,
    build_weighting,
    coerce_weighting,
    register_weighting,
    validate_weighting,
    weighting_class,
)
from .constant import Constant, ConstantWeighting
from .dads import Dads, DadsWeighting
from .paced import Paced, PacedWeighting
from .scheduled import Scheduled, ScheduledWeighting

register_weighting("constant")(Constant)
register_weighting("linear")(Scheduled)
register_weighting("cosine")(Scheduled)
register_weighting("adaptive")(Adaptive)
register_weighting("dads")(Dads)
register_weighting("paced")(Paced)

__all__ = [
    "Adaptive",
    "AdaptiveWeighting",
    "Constant",
    "ConstantWeighting",
    "Dads",
    "DadsWeighting",
    "Paced",
    "PacedWeighting",
    "Scheduled",
    "ScheduledWeighting",
    "Weighting",
    "WeightingConfig",
    "available_weightings",
    "build_weighting",
    "coerce_weighting",
    "register_weighting",
    "validate_weighting",
    "weighting_class",
]
