"""Mass-covering and symmetric divergences for RL: forward KL, Jensen-Shannon, alpha (DPH-RL, RAPO).

``forward_kl`` is ``KL(pi_ref || pi_theta)``; ``js`` the standard JS divergence (<= log 2); ``alpha`` the f-DPO
paper's ``D_{f_alpha}`` (alpha -> 0 reverse KL, alpha = 1 forward KL). ``mode: sampled`` uses
:func:`rlkit.functional.f_divergence_sampled` (unbiased, control-variate forms) on policy samples (on-policy) or
reference samples (DPH-RL's rehearsal); ``mode: exact`` sums over the vocabulary in chunks with
:func:`rlkit.functional.f_divergence` (or, with the learner's ``grpo.fused_head``, from hidden states with
:func:`rlkit.functional.linear_f_divergence`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rlkit._config import ConfigError
from rlkit.divergences import f_divergence_sampled

from .base import PolicyBatch, Regularizer, RegularizerConfig


class FDivConfig(RegularizerConfig):
    mode: Literal["sampled", "exact"] = "sampled"
    samples: Literal["policy", "reference"] = "policy"
    control_variate: bool = True
    log_ratio_clamp: float | None = Field(20.0, gt=0)
    #: positions per chunk of the exact sum (memory O(chunk x V) on top of the [B,T,V] gradient)
    chunk_size: int | None = Field(256, gt=0)


class ForwardKLConfig(FDivConfig):
    name: Literal["forward_kl"] = "forward_kl"
    coef: float = Field(0.02, ge=0)  # DPH-RL used 0.01-0.05


class JSConfig(FDivConfig):
    name: Literal["js"] = "js"
    coef: float = Field(0.1, ge=0)  # DPH-RL used 0.05-0.2


class AlphaConfig(FDivConfig):
    name: Literal["alpha"] = "alpha"
    coef: float = Field(0.05, ge=0)
    alpha: float = 0.2  # DPH-RL's code default


class _FDiv(Regularizer):
    divergence_name = ""

    @classmethod
    def check(cls, cfg: FDivConfig, path: str) -> None:
        super().check(cfg, path)
        if cfg.mode == "exact" and "samples" in cfg.model_fields_set:
            raise ConfigError(f"{path}.samples", "'samples' applies to mode 'sampled' only")
        if cfg.placement == "reward" and cfg.samples == "reference":
            raise ConfigError(f"{path}.samples", "reward placement shapes the policy's own samples; use samples 'policy'")

    def default_label(self) -> str:
        return self.name + ("_exact" if self.cfg.mode == "exact" else "")

    def requires(self) -> set[str]:
        if self.cfg.mode == "exact":
            return {"logits", "ref_logits", "mask"}
        return {"logprobs", "ref_logprobs", "mask"}

    def _alpha(self) -> float:
        return getattr(self.cfg, "alpha", 0.5)

    def divergence(self, batch: PolicyBatch) -> torch.Tensor:
        c = self.cfg
        if c.mode == "exact":
            # from logits, or (fused head: batch.logits is None) from batch.hidden with linear_f_divergence
            return batch.exact_divergence(self.divergence_name, self.reference_key, self.label, self._alpha(),
                                          c.chunk_size)
        if (c.samples == "reference") != (batch.sampled_from == "ref"):
            raise ValueError(f"regularizer {self.label!r} is configured for samples from the "
                             f"{c.samples}, but the batch was sampled from {batch.sampled_from!r}")
        ref = batch.reference("ref_logprobs", self.reference_key, self.label)
        return f_divergence_sampled(batch.logprobs, ref, self.divergence_name,
                                    sampled_from="ref" if c.samples == "reference" else "policy",
                                    alpha=self._alpha(), control_variate=c.control_variate,
                                    log_ratio_clamp=c.log_ratio_clamp)


class ForwardKL(_FDiv):
    name = divergence_name = "forward_kl"
    Config = ForwardKLConfig


class JS(_FDiv):
    name = divergence_name = "js"
    Config = JSConfig


class Alpha(_FDiv):
    name = divergence_name = "alpha"
    Config = AlphaConfig
