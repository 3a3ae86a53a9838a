"""Reverse KL, ``KL(pi_theta || pi_ref)``: the RLHF default (GRPO/verl k3 in the loss; PPO k1 in the reward)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rlkit._config import ConfigError
from rlkit.divergences import KL_ESTIMATORS, f_divergence_sampled, kl_penalty

from .base import PolicyBatch, Regularizer, RegularizerConfig

Estimator = Literal["k1", "k2", "k3", "abs", "k1+", "k3+"]
assert set(Estimator.__args__) == set(KL_ESTIMATORS)


class KLConfig(RegularizerConfig):
    """``estimator``: k1/k2/k3/abs/k1+/k3+ (sampled mode, policy samples); ``mode: exact`` uses full logits;
    ``samples: reference`` estimates from reference samples (``u log u - u + 1``); ``importance_correction``
    multiplies by ``pi_theta/pi_old`` (TRL's ``use_bias_correction_kl``)."""

    name: Literal["kl"] = "kl"
    estimator: Estimator = "k3"
    mode: Literal["sampled", "exact"] = "sampled"
    samples: Literal["policy", "reference"] = "policy"
    importance_correction: bool = False
    log_ratio_clamp: float | None = Field(20.0, gt=0)
    value_clamp: float | None = Field(10.0, gt=0)
    chunk_size: int | None = Field(1024, gt=0)


class KL(Regularizer):
    """Reverse KL toward the reference. See :func:`rlkit.functional.kl_penalty` for the estimators."""

    name = "kl"
    Config = KLConfig

    @classmethod
    def check(cls, cfg: KLConfig, path: str) -> None:
        super().check(cfg, path)
        explicit = cfg.model_fields_set
        if cfg.mode == "exact" and "estimator" in explicit:
            raise ConfigError(f"{path}.estimator", "estimators apply to mode 'sampled'; mode 'exact' sums over the vocabulary")
        if cfg.samples == "reference":
            if cfg.mode == "exact":
                raise ConfigError(f"{path}.samples", "'samples' applies to mode 'sampled' only")
            if "estimator" in explicit:
                raise ConfigError(f"{path}.estimator", "with samples 'reference' the estimator is u log u - u + 1; "
                                  "k1..k3 assume samples from the policy")
            if cfg.placement == "reward":
                raise ConfigError(f"{path}.samples", "reward placement shapes the policy's own samples; "
                                  "use samples 'policy'")
        if cfg.importance_correction and (cfg.samples != "policy" or cfg.mode != "sampled"):
            raise ConfigError(f"{path}.importance_correction", "only applies to sampled estimates on policy samples")

    def default_label(self) -> str:
        return "kl_exact" if self.cfg.mode == "exact" else f"kl_{self.cfg.estimator}"

    def requires(self) -> set[str]:
        if self.cfg.mode == "exact":
            return {"logits", "ref_logits", "mask"}
        need = {"logprobs", "ref_logprobs", "mask"}
        return need | {"old_logprobs"} if self.cfg.importance_correction else need

    def divergence(self, batch: PolicyBatch) -> torch.Tensor:
        c = self.cfg
        if c.mode == "exact":
            # from logits, or (fused head: batch.logits is None) from batch.hidden with linear_f_divergence
            return batch.exact_divergence("reverse_kl", self.reference_key, self.label, chunk_size=c.chunk_size)
        ref = batch.reference("ref_logprobs", self.reference_key, self.label)
        if c.samples == "reference":
            return f_divergence_sampled(batch.logprobs, ref, "reverse_kl", sampled_from="ref",
                                        log_ratio_clamp=c.log_ratio_clamp)
        value = kl_penalty(batch.logprobs, ref, c.estimator, c.log_ratio_clamp, c.value_clamp)
        if c.importance_correction:
            old = batch.require("old_logprobs", self.label)
            value = value * torch.exp(torch.clamp(batch.logprobs - old, max=20.0))
        return value
