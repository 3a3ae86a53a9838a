"""The ``proxy`` reference: Lp-Reg's filtered, renormalized self-distribution (arXiv 2510.03222).

The learner builds it from its own (old-policy or reference) logits (:meth:`rlkit.regularizers.lp_reg.LpReg
.proxy_logprobs`), so it has no checkpoint and no reference worker, and only ``lp_reg`` reads it."""

from __future__ import annotations

from typing import Literal

from rlkit._config import ConfigError

from .registry import ReferenceConfig, ReferenceType


class ProxyConfig(ReferenceConfig):
    type: Literal["proxy"] = "proxy"


class ProxyReference(ReferenceType):
    Config = ProxyConfig
    learner_side = True

    @classmethod
    def check_use(cls, cfg: ReferenceConfig, regularizer: str, path: str) -> None:
        if regularizer != "lp_reg":
            raise ConfigError(path, "'proxy' is Lp-Reg's filtered self-distribution; use regularizer 'lp_reg' for it")
