"""Reverse KL, ``KL(pi_theta || pi_ref)``: the RLHF default (GRPO's KL in the loss; PPO's k1 in the reward).

The *value* estimator (``estimator``: what ``<label>/value`` logs) and the *gradient* (``gradient``: what the
penalty optimizes) are separate choices (shared/docs/regularizers.md, section 2b):

* ``gradient: token`` (default): the reverse KL of each visited state, states held fixed; the surrogate
  ``sg(d) log pi`` (k2's gradient, ``d = log pi - log pi_ref``), whatever the value estimator.
* ``gradient: sequence``: the gradient of ``KL(P || P_ref)`` between sequence distributions: the token term plus
  ``sg(sum of the later tokens' k3) * log pi`` (score-function terms; see :mod:`rlkit.divergences.gradients`).
* ``gradient: pathwise``: differentiate the value estimator as written, as GRPO (Shao et al. 2024), verl's
  ``low_var_kl`` and OpenRLHF's k3 do. On policy samples this delivers, in expectation, **k3: the forward KL's
  gradient**, k1: zero, k2: the reverse KL's. Kept to reproduce those papers exactly (preset
  ``kl_k3_pathwise``); it is never the default. With ``importance_correction`` the differentiated ratio
  ``pi/sg(pi_old)`` adds ``k grad log pi``, which turns k3's (and k1's) gradient into the reverse KL's: that is
  TRL's ``use_bias_correction_kl`` (default on in TRL 1.x, after DeepSeek-V3.2).

``samples: reference``: the samples come from the reference (DPH-RL-style rehearsal batches), value
``u log u - u + 1`` (``u = pi/pi_ref``), whose pathwise gradient is exact at token level; at sequence level prefix
weights ``prod u`` enter. ``mode: exact`` sums over the vocabulary at each visited state.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from pydantic import Field

from rlkit._config import ConfigError
from rlkit.divergences import KL_ESTIMATORS, kl_penalty
from rlkit.divergences.gradients import exact_sequence_penalty, sampled_penalty

from .base import PolicyBatch, Regularizer, RegularizerConfig

Estimator = Literal["k1", "k2", "k3", "abs", "k1+", "k3+"]
assert set(get_args(Estimator)) == set(KL_ESTIMATORS)

#: what each estimator's value is on policy samples
ESTIMATOR_VALUE = {
    "k1": "k1 (unbiased)",
    "k2": "k2 = d^2/2 (biased)",
    "k3": "k3 (unbiased)",
    "abs": "abs(d) (not a KL)",
    "k1+": "k1 (unbiased)",
    "k3+": "k3 (unbiased)",
}
#: what each estimator's pathwise gradient is on policy samples (section 2b of regularizers.md)
PATHWISE_GRADIENT = {
    "k1": "none (zero in expectation)",
    "k2": "reverse KL (token)",
    "k3": "forward KL (token)",
    "abs": "sign(d) (no divergence's)",
    "k1+": "reverse KL (token)",
    "k3+": "reverse KL (token)",
}
#: ... and times the differentiated ratio pi/sg(pi) (TRL's use_bias_correction_kl, DeepSeek-V3.2): the pathwise
#: gradient becomes (k' + k) grad log pi: d for k3, 1 + d for k1 (the 1 has zero mean), d + d^2/2 for k2
PATHWISE_CORRECTED_GRADIENT = {
    "k1": "reverse KL (token)",
    "k2": "d + d^2/2 (no divergence's)",
    "k3": "reverse KL (token)",
    "abs": "sign(d) + |d| (no divergence's)",
}


class KLConfig(RegularizerConfig):
    """``estimator``: the value on policy samples, k1/k2/k3/abs (``k1+``/``k3+``: the older straight-through
    spellings of k1/k3 with the reverse-KL gradient, i.e. ``gradient: token``); ``gradient``: token / sequence /
    pathwise (see the module docstring); ``mode: exact`` uses full logits; ``samples: reference`` estimates from
    reference samples (``u log u - u + 1``); ``importance_correction`` weights each token by ``pi_theta/pi_old``
    (TRL's ``use_bias_correction_kl``: the ratio is differentiated with ``gradient: pathwise``, a detached
    weight otherwise). ``weight_cap`` caps the sequence gradient's importance weights (biased; off)."""

    name: Literal["kl"] = "kl"
    estimator: Estimator = "k3"
    gradient: Literal["token", "sequence", "pathwise"] = "token"
    mode: Literal["sampled", "exact"] = "sampled"
    samples: Literal["policy", "reference"] = "policy"
    importance_correction: bool = False
    log_ratio_clamp: float | None = Field(20.0, gt=0)
    value_clamp: float | None = Field(10.0, gt=0)
    weight_cap: float | None = Field(None, gt=0)
    chunk_size: int | None = Field(1024, gt=0)


class KL(Regularizer[KLConfig]):
    """Reverse KL toward the reference. See :func:`rlkit.functional.kl_penalty` for the estimators."""

    name = "kl"
    Config = KLConfig

    @classmethod
    def check(cls, cfg: KLConfig, path: str) -> None:
        super().check(cfg, path)
        explicit = cfg.model_fields_set
        if cfg.mode == "exact" and "estimator" in explicit:
            raise ConfigError(
                f"{path}.estimator", "estimators apply to mode 'sampled'; mode 'exact' sums over the vocabulary"
            )
        if cfg.mode == "exact" and cfg.gradient == "pathwise":
            raise ConfigError(
                f"{path}.gradient",
                "'pathwise' differentiates a sampled estimator; mode 'exact' "
                "delivers the exact gradient (token or sequence)",
            )
        if cfg.samples == "reference":
            if cfg.mode == "exact":
                raise ConfigError(
                    f"{path}.samples",
                    "'samples' applies to mode 'sampled' only (exact mode needs "
                    "the reference's logits at the policy's own states)",
                )
            if "estimator" in explicit:
                raise ConfigError(
                    f"{path}.estimator",
                    "with samples 'reference' the estimator is u log u - u + 1; k1..k3 assume samples from the policy",
                )
            if cfg.gradient == "pathwise":
                raise ConfigError(
                    f"{path}.gradient",
                    "on reference samples the pathwise gradient is the token gradient: use 'token' or 'sequence'",
                )
        if cfg.placement == "reward":
            if cfg.samples == "reference":
                raise ConfigError(
                    f"{path}.samples", "reward placement shapes the policy's own samples; use samples 'policy'"
                )
            if cfg.mode == "sampled" and cfg.estimator != "k1":
                raise ConfigError(
                    f"{path}.estimator",
                    "in the reward only k1 delivers the reverse-KL gradient "
                    "(E[grad log P * sum k1] = grad KL(P || P_ref)); k2/k3 there optimize another "
                    "quantity: use estimator k1, or placement 'loss'",
                )
            if "gradient" in explicit and cfg.gradient != "sequence":
                raise ConfigError(
                    f"{path}.gradient",
                    "placement 'reward' delivers the sequence-level gradient "
                    "through the return: set gradient 'sequence' or leave it out",
                )
        if cfg.estimator in ("k1+", "k3+") and cfg.gradient != "token":
            raise ConfigError(
                f"{path}.estimator",
                f"{cfg.estimator!r} is k{cfg.estimator[1]} with the token "
                f"gradient; with gradient {cfg.gradient!r} write estimator 'k{cfg.estimator[1]}'",
            )
        if cfg.importance_correction and (
            cfg.samples != "policy" or cfg.mode != "sampled" or cfg.gradient == "sequence"
        ):
            raise ConfigError(
                f"{path}.importance_correction",
                "only applies to sampled estimates on policy samples with gradient 'token' or 'pathwise'",
            )

    def default_label(self) -> str:
        c = self.cfg
        base = "kl_exact" if c.mode == "exact" else ("kl_ref" if c.samples == "reference" else f"kl_{c.estimator}")
        return base + {"token": "", "sequence": "_seq", "pathwise": "_pathwise"}[c.gradient]

    def describe(self) -> dict[str, str]:
        c = self.cfg
        on = {
            "exact": "exact over the vocabulary",
            "sampled": f"{ESTIMATOR_VALUE[c.estimator]} on policy samples"
            if c.samples == "policy"
            else "u log u - u + 1 on reference samples",
        }[c.mode]
        if c.placement == "reward":
            return {
                "value": f"reverse KL, {on}, subtracted from the reward",
                "gradient": "reverse KL (sequence), through the return",
            }
        level = "sequence" if c.gradient == "sequence" else "token"
        pathwise = PATHWISE_CORRECTED_GRADIENT if c.importance_correction else PATHWISE_GRADIENT
        grad = pathwise[c.estimator] if c.gradient == "pathwise" else f"reverse KL ({level})"
        return {"value": f"reverse KL, {on}" + (", per sequence" if level == "sequence" else ""), "gradient": grad}

    def requires(self) -> set[str]:
        if self.cfg.mode == "exact":
            need = {"logits", "ref_logits", "mask"}
            return need
        need = {"logprobs", "ref_logprobs", "mask"}
        return need | {"old_logprobs"} if self.cfg.importance_correction else need

    def divergence(self, batch: PolicyBatch) -> torch.Tensor:
        return self.penalty(batch)[0]

    def penalty(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict]:
        c = self.cfg
        if c.mode == "exact":
            # from logits, or (fused head: batch.logits is None) from batch.hidden with linear_f_divergence
            per_state = batch.exact_divergence("reverse_kl", self.reference_key, self.label, chunk_size=c.chunk_size)
            if c.gradient == "token":
                return per_state, {}
            return exact_sequence_penalty(per_state, batch.logprobs, None, batch.mask, "reverse_kl")
        check_samples(self, batch, c.samples)
        ref = batch.reference("ref_logprobs", self.reference_key, self.label)
        if c.samples == "reference":
            return sampled_penalty(
                batch.logprobs,
                ref,
                batch.mask,
                "reverse_kl",
                "reference",
                c.gradient,
                log_ratio_clamp=c.log_ratio_clamp,
                weight_cap=c.weight_cap,
            )
        estimator = c.estimator.rstrip("+")
        value = kl_penalty(batch.logprobs, ref, estimator, c.log_ratio_clamp, c.value_clamp)
        ratio = None
        if c.importance_correction:
            ratio = torch.exp(torch.clamp(batch.logprobs - batch.require("old_logprobs", self.label), max=20.0))
        if c.gradient == "pathwise" or c.placement == "reward":
            return (value if ratio is None else value * ratio), {}
        out, stats = sampled_penalty(
            batch.logprobs,
            ref,
            batch.mask,
            "reverse_kl",
            "policy",
            c.gradient,
            value=value,
            log_ratio_clamp=c.log_ratio_clamp,
            weight_cap=c.weight_cap,
        )
        return (out if ratio is None else out * ratio.detach()), stats


def check_samples(reg: Regularizer, batch: PolicyBatch, samples: str) -> None:
    """A sampled penalty's gradient is right only for the sampling distribution it assumes: refuse the other."""
    if (samples == "reference") != (batch.sampled_from == "ref"):
        raise ValueError(
            f"regularizer {reg.label!r} is configured for samples from the {samples}, but the batch "
            f"was sampled from {batch.sampled_from!r}"
        )
