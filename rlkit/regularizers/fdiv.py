"""Mass-covering and symmetric divergences for RL: forward KL, Jensen-Shannon, alpha (DPH-RL, RAPO).

``forward_kl`` is ``KL(pi_ref || pi_theta)``; ``js`` the standard JS divergence (<= log 2); ``alpha`` the f-DPO
paper's ``D_{f_alpha}`` (alpha -> 0 reverse KL, alpha = 1 forward KL). ``mode: sampled`` reports the unbiased
control-variate estimate of :func:`rlkit.functional.f_divergence_sampled` on policy samples (on-policy) or
reference samples (DPH-RL's rehearsal); ``mode: exact`` sums over the vocabulary in chunks with
:func:`rlkit.functional.f_divergence` (or, with the learner's ``grpo.fused_head``, from hidden states with
:func:`rlkit.functional.linear_f_divergence`).

Gradient: on policy samples the value estimator differentiated as written optimizes neither divergence (the
forward-KL form ``rho log rho - rho + 1`` in the loss has neither the forward nor the reverse gradient), so the
penalty carries the surrogate ``sg(s (f'(u) - f'(1))) log pi`` instead (:func:`rlkit.divergences.gradients.
sampled_penalty`): its expected gradient is the named divergence's, per visited state (``gradient: token``).
``forward_kl`` also offers ``gradient: sequence``: ``KL(P_ref || P)`` between sequence distributions, with
prefix importance weights on policy samples (``weight_cap`` caps them; biased, off by default). On reference
samples the pathwise gradient is already exact (and, for forward KL, token = sequence).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rlkit._config import ConfigError
from rlkit.divergences.gradients import exact_sequence_penalty, sampled_penalty

from .base import PolicyBatch, Regularizer, RegularizerConfig
from .kl import check_samples

_NAMED = {"forward_kl": "forward KL", "js": "JS", "alpha": "alpha-divergence"}


class FDivConfig(RegularizerConfig):
    mode: Literal["sampled", "exact"] = "sampled"
    samples: Literal["policy", "reference"] = "policy"
    gradient: Literal["token", "sequence"] = "token"
    log_ratio_clamp: float | None = Field(20.0, gt=0)
    #: cap of the prefix importance weights of forward KL's sequence gradient on policy samples (None: uncapped)
    weight_cap: float | None = Field(None, gt=0)
    #: positions per chunk of the exact sum (memory O(chunk x V) on top of the [B,T,V] gradient)
    chunk_size: int | None = Field(256, gt=0)


class ForwardKLConfig(FDivConfig):
    name: Literal["forward_kl"] = "forward_kl"
    coef: float = Field(0.02, ge=0)  # DPH-RL used 0.01-0.05


class JSConfig(FDivConfig):
    name: Literal["js"] = "js"
    # DPH-RL used 0.05-0.2 on its generator f_js, whose expectation is 2 x JS; rlkit's js is the standard JS, so
    # 0.2 here is the paper's 0.1 in effective strength
    coef: float = Field(0.2, ge=0)


class AlphaConfig(FDivConfig):
    name: Literal["alpha"] = "alpha"
    coef: float = Field(0.05, ge=0)
    alpha: float = 0.2  # DPH-RL's code default


class _FDiv(Regularizer[FDivConfig]):
    divergence_name = ""

    @classmethod
    def check(cls, cfg: FDivConfig, path: str) -> None:
        super().check(cfg, path)
        if cfg.mode == "exact" and "samples" in cfg.model_fields_set:
            raise ConfigError(f"{path}.samples", "'samples' applies to mode 'sampled' only")
        if cfg.placement == "reward" and cfg.samples == "reference":
            raise ConfigError(
                f"{path}.samples", "reward placement shapes the policy's own samples; use samples 'policy'"
            )
        if cfg.placement == "reward":
            raise ConfigError(
                f"{path}.placement",
                f"in the reward, {cls.name}'s per-token estimate does not deliver "
                f"the {cls.name} gradient through the return (only k1 of the reverse KL does): "
                "use placement 'loss'",
            )
        if cfg.gradient == "sequence" and cls.name != "forward_kl":
            raise ConfigError(
                f"{path}.gradient",
                f"'sequence' is defined for kl and forward_kl (sums of per-state "
                f"KLs by the chain rule), not {cls.name}: use 'token'",
            )
        if cfg.mode == "exact" and cfg.samples == "reference":
            raise ConfigError(f"{path}.samples", "exact mode needs the reference's logits at the policy's states")

    def default_label(self) -> str:
        c = self.cfg
        return (
            self.name
            + ("_exact" if c.mode == "exact" else "_ref" if c.samples == "reference" else "")
            + ("_seq" if c.gradient == "sequence" else "")
        )

    def describe(self) -> dict[str, str]:
        c, named = self.cfg, _NAMED[self.name] + (f" (alpha={self._alpha():g})" if self.name == "alpha" else "")
        level = "sequence" if c.gradient == "sequence" else "token"
        how = (
            "exact over the vocabulary"
            if c.mode == "exact"
            else "on reference samples"
            if c.samples == "reference"
            else "on policy samples"
        )
        return {
            "value": f"{named}, {how}" + (", per sequence" if level == "sequence" else ""),
            "gradient": f"{named} ({level})",
        }

    def _alpha(self) -> float:
        return getattr(self.cfg, "alpha", 0.5)

    def requires(self) -> set[str]:
        if self.cfg.mode == "exact":
            need = {"logits", "ref_logits", "mask"}
            return need | {"ref_logprobs"} if self.cfg.gradient == "sequence" else need
        return {"logprobs", "ref_logprobs", "mask"}

    def divergence(self, batch: PolicyBatch) -> torch.Tensor:
        return self.penalty(batch)[0]

    def penalty(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict]:
        c = self.cfg
        if c.mode == "exact":
            # from logits, or (fused head: batch.logits is None) from batch.hidden with linear_f_divergence
            per_state = batch.exact_divergence(
                self.divergence_name, self.reference_key, self.label, self._alpha(), c.chunk_size
            )
            if c.gradient == "token":
                return per_state, {}
            ref = batch.reference("ref_logprobs", self.reference_key, self.label)
            return exact_sequence_penalty(
                per_state, batch.logprobs, ref, batch.mask, self.divergence_name, c.weight_cap, c.log_ratio_clamp
            )
        check_samples(self, batch, c.samples)
        ref = batch.reference("ref_logprobs", self.reference_key, self.label)
        return sampled_penalty(
            batch.logprobs,
            ref,
            batch.mask,
            self.divergence_name,
            c.samples,
            c.gradient,
            self._alpha(),
            log_ratio_clamp=c.log_ratio_clamp,
            weight_cap=c.weight_cap,
        )


class ForwardKL(_FDiv):
    name = divergence_name = "forward_kl"
    Config = ForwardKLConfig


class JS(_FDiv):
    name = divergence_name = "js"
    Config = JSConfig


class Alpha(_FDiv):
    name = divergence_name = "alpha"
    Config = AlphaConfig
