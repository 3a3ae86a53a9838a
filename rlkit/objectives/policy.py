"""Policy-gradient objectives: the clipped surrogate and GRPO's loss with pluggable regularizers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlkit.regularizers.base import PolicyBatch, Regularizer

from .aggregation import aggregate, masked_mean


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    log_ratio_clamp: float = 20.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate per token (Schulman et al. 2017, arXiv 1707.06347), as a loss to minimise:

    ``ratio = exp(logprobs - old_logprobs)``, ``L = max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high))``.
    Asymmetric ``clip_high > clip_low`` is DAPO's clip-higher (arXiv 2503.14476). ``dual_clip = c > 1`` bounds the
    loss of negative-advantage tokens by ``-c A`` (Ye et al. 2020). ``advantages``: ``[B]`` or ``[B, T]``.
    Returns ``(per_token_loss, stats)`` with ``ratio`` and the bool ``clipped`` mask.
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    adv = adv.to(torch.float32).detach()
    log_ratio = torch.clamp(logprobs.float() - old_logprobs.float().detach(), -log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return loss, {"ratio": ratio, "clipped": (clipped > unclipped) & mask.to(torch.bool), "unclipped": unclipped}


def policy_loss(
    batch: PolicyBatch,
    regularizers: Sequence[Regularizer] = (),
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    norm_length: int | None = None,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO / PPO policy loss with regularizers: ``agg(c L_clip) + sum_r agg(coef_r w_r D_r) - entropy_coef agg(H)``.

    ``token_weights`` ``c`` (no gradient; default 1) scale the surrogate per token, e.g. the truncated
    importance weights of :func:`tis_weights` that correct for the rollout engine sampling from a slightly
    different distribution than the learner computes.

    Regularizers with ``placement == "reward"`` are skipped here (see :func:`rlkit.objectives.ppo.reward_penalty`).
    A regularizer may override the surrogate on some tokens (Lp-Reg): there ``L = -A ratio`` (unclipped).
    Every term is aggregated with ``aggregation``, except a regularizer that sets its own (``cfg.aggregation``).
    Returns ``(loss, metrics)``.
    """
    if batch.old_logprobs is None or batch.advantages is None:
        raise ValueError("policy_loss needs batch.old_logprobs and batch.advantages")
    mask = batch.mask
    per_token, stats = clipped_surrogate(
        batch.logprobs, batch.old_logprobs, batch.advantages, mask, clip_low, clip_high, dual_clip
    )
    in_loss = [r for r in regularizers if r.placement == "loss"]
    metrics: dict[str, float] = {}
    for reg in in_loss:
        override = reg.surrogate_override(batch)
        if override is not None:
            per_token = torch.where(override, stats["unclipped"], per_token)
    if token_weights is not None:
        per_token = per_token * token_weights.detach().to(per_token.dtype)
    pg_loss = aggregate(per_token, mask, aggregation, norm_length)
    loss = pg_loss
    for reg in in_loss:
        out = reg(batch)
        loss = loss + aggregate(out.per_token, mask, reg.cfg.aggregation or aggregation, norm_length)
        metrics.update(out.metrics)
    if entropy_coef:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy")
        loss = loss - entropy_coef * aggregate(entropy, mask, aggregation, norm_length)
    with torch.no_grad():
        log_ratio = batch.logprobs.float() - batch.old_logprobs.float()
        metrics.update(
            {
                "loss/policy": pg_loss.item(),
                "loss/total": loss.item(),
                "policy/clip_frac": float(masked_mean(stats["clipped"].float(), mask)),
                "policy/ratio_mean": float(masked_mean(stats["ratio"], mask)),
                "policy/approx_kl_old": float(masked_mean(torch.expm1(-log_ratio) + log_ratio, mask)),
            }
        )
        if entropy is not None:
            metrics["policy/entropy"] = float(masked_mean(entropy.float(), mask))
    return loss, metrics


@torch.no_grad()
def tis_weights(
    learner_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor, cap: float = 2.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance sampling for rollout/learner mismatch (Yao et al. 2025, "Your efficient RL framework
    secretly brings you off-policy RL training"; the TIS of verl/OpenRLHF).

    The engine samples from ``pi_rollout`` while the learner's old policy is ``pi_old`` (same weights, different
    kernels/precision). The unbiased policy gradient weights each token by ``pi_old / pi_rollout``; truncating it
    at ``cap`` bounds the variance: ``w_t = min(exp(logp_old_t - logp_rollout_t), cap)``. Returns ``(w, metrics)``
    with ``w`` zero on padding.
    """
    if cap <= 0:
        raise ValueError(f"TIS cap must be > 0, got {cap}")
    log_ratio = (learner_logprobs.float() - rollout_logprobs.float()).clamp(max=20.0)
    raw = torch.exp(log_ratio)
    w = raw.clamp(max=cap) * mask.to(torch.float32)
    return w, {
        "rollout/tis_weight_mean": float(masked_mean(w, mask)),
        "rollout/tis_clip_frac": float(masked_mean((raw > cap).float(), mask)),
    }


def grpo_loss(
    batch: PolicyBatch, regularizers: Sequence[Regularizer] = (), **kwargs
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's loss (Shao et al. 2024, arXiv 2402.03300): the clipped surrogate on group-relative advantages
    (``batch.advantages``, ``[B]``, see :func:`rlkit.advantages.group_advantages`) plus regularizers in the loss
    (the default is reverse KL, k3, toward the initial policy). Keyword arguments as :func:`policy_loss`."""
    return policy_loss(batch, regularizers, **kwargs)
