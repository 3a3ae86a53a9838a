"""GSPO's sequence-level clipped objective (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv
2507.18071)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlkit.regularizers.base import PolicyBatch, Regularizer

from .aggregation import aggregate, masked_mean


def sequence_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, log_ratio_clamp: float = 20.0
) -> torch.Tensor:
    """GSPO's length-normalised importance ratio per sequence, ``s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|)
    = exp(mean_t (log pi_t - log pi_old_t))`` over the completion tokens, ``[B]``."""
    m = mask.to(torch.float32)
    mean_log_ratio = ((logprobs.float() - old_logprobs.float().detach()) * m).sum(-1) / m.sum(-1).clamp_min(1)
    return torch.exp(mean_log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp))


def gspo_loss(
    batch: PolicyBatch,
    regularizers: Sequence[Regularizer] = (),
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    aggregation: str = "seq-mean-token-mean",
    norm_length: int | None = None,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO's loss to minimise: ``mean_i max(-A_i s_i, -A_i clip(s_i, 1 - clip_low, 1 + clip_high))`` with
    :func:`sequence_ratio` ``s_i`` and one advantage per sequence (``batch.advantages`` ``[B]``, e.g. GRPO's group
    advantage), plus the loss-placed regularizers (aggregated with ``aggregation``) and ``- entropy_coef agg(H)``.

    The paper clips the sequence ratio far tighter than PPO clips token ratios (its ``clip_low=3e-4``,
    ``clip_high=4e-4``). Its gradient is ``mean_i A_i s_i mean_t grad log pi(y_it)`` where unclipped: every token of
    a sequence weighted alike, which is GSPO's point. Regularizers that replace the token surrogate (Lp-Reg) do not
    apply to a sequence-level ratio and are refused.
    """
    if batch.old_logprobs is None or batch.advantages is None:
        raise ValueError("gspo_loss needs batch.old_logprobs and batch.advantages")
    if batch.advantages.dim() != 1:
        raise ValueError(f"gspo_loss takes one advantage per sequence ([B]), got shape {tuple(batch.advantages.shape)}")
    mask, adv = batch.mask, batch.advantages.float().detach()
    s = sequence_ratio(batch.logprobs, batch.old_logprobs, mask)
    unclipped, clipped = -adv * s, -adv * torch.clamp(s, 1.0 - clip_low, 1.0 + clip_high)
    pg_loss = torch.maximum(unclipped, clipped).mean()
    loss, metrics = pg_loss, {}
    for reg in (r for r in regularizers if r.placement == "loss"):
        if reg.surrogate_override(batch) is not None:
            raise ValueError(f"regularizer {reg.label!r} replaces the token surrogate; GSPO's ratio is per sequence")
        out = reg(batch)
        loss = loss + aggregate(out.per_token, mask, reg.cfg.aggregation or aggregation, norm_length)
        metrics.update(out.metrics)
    if entropy_coef:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy")
        loss = loss - entropy_coef * aggregate(entropy, mask, aggregation, norm_length)
    with torch.no_grad():
        metrics.update(
            {
                "loss/policy": pg_loss.item(),
                "loss/total": loss.item(),
                "policy/clip_frac": float((clipped > unclipped).float().mean()),
                "policy/seq_ratio_mean": float(s.mean()),
            }
        )
        if entropy is not None:
            metrics["policy/entropy"] = float(masked_mean(entropy.float(), mask))
    return loss, metrics
