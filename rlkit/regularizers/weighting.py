"""The weightings of a regularizer, under their former module name: one class per weighting now lives in
:mod:`rlkit.regularizers.weightings` (a new one: a module there plus one registry line)."""

from .weightings import (
    Adaptive,
    AdaptiveWeighting,
    Constant,
    ConstantWeighting,
    Dads,
    DadsWeighting,
    Paced,
    PacedWeighting,
    Scheduled,
    ScheduledWeighting,
    Weighting,
    WeightingConfig,
    available_weightings,
    build_weighting,
    coerce_weighting,
    register_weighting,
    validate_weighting,
    weighting_class,
)

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
