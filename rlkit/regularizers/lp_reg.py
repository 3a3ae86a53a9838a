"""Lp-Reg (arXiv 2510.03222, "Low-probability Tokens Sustain Exploration in RLVR").

Proxy ``pi_proxy``: the old policy's (or the reference's) distribution at rollout temperature, min-p filtered
(keep ``p_v >= min_p * max p``) and renormalized, without gradient (:func:`rlkit.functional.lp_reg_proxy_logprobs`).
Selected tokens: negative advantage, among those the lowest ``rho`` fraction by current log-prob (per batch), and
only where ``pi_proxy(o_t) > pi_theta(o_t)`` (the token survived the filter). On selected tokens the objective
replaces the clipped surrogate by the unclipped ``-A * ratio`` and adds ``coef * k3(pi_theta || pi_proxy)``
(``k3 = r - log r - 1``, ``r = pi_proxy / pi_theta``, clamped to [-10, 10]). The paper's scripts: ``min_p``
(kappa) 0.02, ``rho`` 1%, coef 1.0, no reference KL, no entropy bonus.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from rlkit._config import ConfigError
from rlkit.divergences import kl_penalty, lp_reg_proxy_logprobs

from rlkit.references import validate_reference

from .base import PolicyBatch, ReferenceField, Regularizer, RegularizerConfig


class LpRegConfig(RegularizerConfig):
    name: Literal["lp_reg"] = "lp_reg"
    coef: float = Field(1.0, ge=0)
    reference: ReferenceField = Field(default_factory=lambda: validate_reference("proxy"))
    proxy_from: Literal["old_policy", "reference"] = "old_policy"
    min_p: float = Field(0.02, gt=0, le=1)
    threshold: Literal["relative", "absolute"] = "relative"
    temperature: float = Field(1.0, gt=0)
    rho: float = Field(0.01, gt=0, le=1)
    rho_positive: float = Field(0.0, ge=0, le=1)


def _lowest_fraction(logprobs: torch.Tensor, candidates: torch.Tensor, rho: float) -> torch.Tensor:
    """Bool mask of the ``ceil(rho * n)`` candidates with the lowest log-prob (ties at the cut included)."""
    values = logprobs.detach()[candidates]
    if values.numel() == 0 or rho <= 0:
        return torch.zeros_like(candidates)
    k = max(1, math.ceil(rho * values.numel()))
    cut = torch.kthvalue(values.float(), k).values
    return candidates & (logprobs.detach() <= cut)


class LpReg(Regularizer[LpRegConfig]):
    name = "lp_reg"
    Config = LpRegConfig

    @classmethod
    def check(cls, cfg: LpRegConfig, path: str) -> None:
        if cfg.reference.type != "proxy":
            raise ConfigError(
                f"{path}.reference",
                "lp_reg always regularizes toward its proxy; to build the proxy "
                "from the reference model set proxy_from: reference",
            )
        if cfg.placement != "loss":
            raise ConfigError(
                f"{path}.placement", "lp_reg replaces the surrogate on selected tokens: it lives in the loss"
            )
        if cfg.weighting.type != "constant":
            raise ConfigError(f"{path}.weighting", "lp_reg supports constant weighting only")

    def requires(self) -> set[str]:
        return {"logprobs", "proxy_logprobs", "advantages", "mask"}

    def describe(self) -> dict[str, str]:
        # as the paper's code: k3 differentiated as written, whose expected gradient is the forward KL's
        return {
            "value": "reverse KL to the min-p proxy (k3), selected tokens",
            "gradient": "forward KL(proxy ‖ pi) (token), selected tokens, as the paper's code",
        }

    def proxy_logprobs(self, logits: torch.Tensor, tokens: torch.Tensor, chunk_size: int | None = 1024) -> torch.Tensor:
        """Build ``batch.proxy_logprobs`` from old-policy (or reference) logits of the sampled ``tokens``."""
        return lp_reg_proxy_logprobs(
            logits, tokens, self.cfg.min_p, self.cfg.temperature, self.cfg.threshold, chunk_size
        )

    def selected(self, batch: PolicyBatch) -> torch.Tensor:
        """Bool ``[B, T]`` of the regularized tokens; computed once per batch (the objective asks three times:
        surrogate override, penalty, metric) and kept in ``batch.extras``."""
        key = f"{self.label}/selected"
        if key not in batch.extras:
            batch.extras[key] = self._select(batch)
        return batch.extras[key]

    def _select(self, batch: PolicyBatch) -> torch.Tensor:
        mask = batch.mask.to(torch.bool)
        adv = batch.require("advantages", self.label)
        adv = adv.unsqueeze(-1).expand_as(mask) if adv.dim() == 1 else adv
        proxy = batch.require("proxy_logprobs", self.label)
        sel = _lowest_fraction(batch.logprobs, mask & (adv < 0), self.cfg.rho)
        if self.cfg.rho_positive > 0:
            sel = sel | _lowest_fraction(batch.logprobs, mask & (adv > 0), self.cfg.rho_positive)
        return sel & (proxy > batch.logprobs.detach())

    def surrogate_override(self, batch: PolicyBatch) -> torch.Tensor:
        return self.selected(batch)

    def divergence(self, batch: PolicyBatch) -> torch.Tensor:
        sel = self.selected(batch)
        value = kl_penalty(batch.logprobs, batch.require("proxy_logprobs", self.label), "k3")
        return torch.where(sel, value, torch.zeros_like(value))

    def __call__(self, batch: PolicyBatch):
        out = super().__call__(batch)
        n = batch.mask.sum().clamp_min(1)
        out.metrics[f"{self.label}/selected_frac"] = float(self.selected(batch).sum() / n)
        return out
