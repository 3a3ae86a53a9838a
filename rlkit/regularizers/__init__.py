"""The regularizer registry: divergence x reference x weighting x placement, named from recipes.

Add one: write a small module with a :class:`Regularizer` subclass (and its ``Config``), then add one
``register("name")(Class)`` line below.
"""

from .base import PolicyBatch, ReferenceConfig, Regularizer, RegularizerConfig, RegularizerOutput
from .fdiv import JS, Alpha, ForwardKL
from .kl import KL
from .lp_reg import LpReg
from .registry import (
    PRESETS,
    available,
    available_presets,
    build_regularizers,
    catalogue,
    check_objective,
    get,
    register,
)

register("kl")(KL)
register("forward_kl")(ForwardKL)
register("js")(JS)
register("alpha")(Alpha)
register("lp_reg")(LpReg)

__all__ = [
    "PRESETS",
    "PolicyBatch",
    "ReferenceConfig",
    "Regularizer",
    "RegularizerConfig",
    "RegularizerOutput",
    "available",
    "available_presets",
    "build_regularizers",
    "catalogue",
    "check_objective",
    "get",
    "register",
]
