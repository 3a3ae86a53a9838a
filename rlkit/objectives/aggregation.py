"""How per-token losses become one scalar (the choice matters: DAPO, Dr. GRPO)."""

from __future__ import annotations

import torch

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "drgrpo")


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", norm_length: int | None = None
) -> torch.Tensor:
    """Reduce ``[B, T]`` per-token values over the completion ``mask``.

    * ``token-mean``: ``sum(v m) / sum(m)``, every token weighs the same (DAPO; verl's default).
    * ``seq-mean-token-mean``: mean over sequences of each sequence's token mean (original GRPO).
    * ``seq-mean-token-sum``: mean over sequences of each sequence's token sum.
    * ``drgrpo``: ``sum(v m) / (B * L)`` with a constant ``L = norm_length``, Dr. GRPO's length-unbiased form (Liu
      et al. 2025, arXiv 2503.20783, which divides by the generation budget, ``max_new_tokens``). ``L`` must be
      given: the padded length ``T`` changes from batch to batch, which would make the normaliser (and so the
      step size) depend on the longest completion of the batch. The GRPO learner passes ``grpo.norm_length``,
      which the driver fills with ``rollout.max_new_tokens``.
    """
    m = mask.to(values.dtype)
    vm = values * m
    if mode == "token-mean":
        return vm.sum() / m.sum().clamp_min(1)
    if mode == "seq-mean-token-mean":
        return (vm.sum(-1) / m.sum(-1).clamp_min(1)).mean()
    if mode == "seq-mean-token-sum":
        return vm.sum(-1).mean()
    if mode == "drgrpo":
        if norm_length is None or norm_length <= 0:
            raise ValueError(
                "aggregation 'drgrpo' needs a constant norm_length > 0 (Dr. GRPO's L, e.g. "
                f"rollout.max_new_tokens), got {norm_length!r}; the padded length varies between "
                "batches and is not used"
            )
        return vm.sum() / (values.shape[0] * norm_length)
    raise ValueError(f"unknown aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1)
