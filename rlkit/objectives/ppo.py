"""PPO pieces beyond the policy surrogate: value loss, KL-in-reward shaping, and the combined loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rlkit.regularizers.base import PolicyBatch, Regularizer

from .aggregation import aggregate, masked_mean
from .policy import policy_loss


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
    aggregation: str = "token-mean",
    norm_length: int | None = None,
) -> torch.Tensor:
    """Clipped value loss: ``1/2 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`` (``clip=None``: plain
    ``1/2 (V - R)^2``), aggregated over the completion mask (``norm_length``: the constant of ``drgrpo``)."""
    err = (values.float() - returns.float()).square()
    if clip is not None:
        clipped = old_values.float() + torch.clamp(values.float() - old_values.float(), -clip, clip)
        err = torch.maximum(err, (clipped - returns.float()).square())
    return 0.5 * aggregate(err, mask, aggregation, norm_length)


@torch.no_grad()
def reward_penalty(batch: PolicyBatch, regularizers: Sequence[Regularizer]) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token penalty ``sum_r coef_r D_r`` of the regularizers placed in the reward (no gradient).

    ``batch.logprobs`` must be the rollout policy's log-probs (classic PPO-RLHF: ``k1(pi_old, pi_ref)``). The
    metrics carry each regularizer's mean per-token value, which an adaptive coefficient should ``observe``.
    """
    total = torch.zeros_like(batch.logprobs, dtype=torch.float32)
    metrics: dict[str, float] = {}
    for reg in regularizers:
        if reg.placement != "reward":
            continue
        out = reg(batch)
        total = total + out.per_token.float()
        metrics.update(out.metrics)
    return total, metrics


def token_level_rewards(scores: torch.Tensor, mask: torch.Tensor, penalty: torch.Tensor | None = None) -> torch.Tensor:
    """PPO-RLHF reward per token: the sequence score on the last completion token, minus the per-token penalty."""
    m = mask.to(torch.float32)
    rewards = torch.zeros_like(m)
    last = (m.cumsum(-1) * m).argmax(-1)
    rewards[torch.arange(m.shape[0]), last] = scores.float() * (m.sum(-1) > 0)
    if penalty is not None:
        rewards = rewards - penalty.float() * m
    return rewards


def ppo_loss(
    batch: PolicyBatch,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    regularizers: Sequence[Regularizer] = (),
    vf_coef: float = 0.5,
    value_clip: float | None = 0.2,
    aggregation: str = "token-mean",
    policy: Callable | None = None,
    **kwargs,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO loss: policy surrogate (+ loss-placed regularizers) ``+ vf_coef * value_loss``. Advantages in
    ``batch.advantages`` are token-level (GAE, :func:`rlkit.advantages.gae_advantages`).

    ``policy(batch, regularizers) -> (loss, metrics)`` replaces the default surrogate (:func:`policy_loss` with
    ``aggregation`` and the keyword arguments): a learner's registered policy loss (``ppo.policy_loss``)."""
    if policy is not None:
        loss, metrics = policy(batch, regularizers)
    else:
        loss, metrics = policy_loss(batch, regularizers, aggregation=aggregation, **kwargs)
    v_loss = value_loss(values, old_values, returns, batch.mask, value_clip, aggregation, kwargs.get("norm_length"))
    loss = loss + vf_coef * v_loss
    with torch.no_grad():
        metrics.update(
            {
                "loss/value": v_loss.item(),
                "loss/total": loss.item(),
                "value/mean": float(masked_mean(values.float(), batch.mask)),
            }
        )
    return loss, metrics
