"""Advantage estimators: group-relative (GRPO, Dr. GRPO), RLOO and GAE. Pure tensor functions."""

from __future__ import annotations

import torch


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}; got shape {tuple(rewards.shape)}"
        )
    return rewards.float().view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300).

    ``rewards``: ``[P * G]``, the G samples of each prompt contiguous. ``A_i = (r_i - mean_g r) / (std_g r + eps)``
    with the unbiased std (as TRL and verl); ``scale_std=False`` gives Dr. GRPO's ``A_i = r_i - mean_g r``
    (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783). Groups of size 1 get 0.
    """
    g = _groups(rewards, group_size)
    centered = g - g.mean(dim=1, keepdim=True)
    if scale_std and group_size > 1:
        centered = centered / (g.std(dim=1, keepdim=True) + eps)
    return centered.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, arXiv 2402.14740): ``A_i = r_i - mean_{j != i} r_j``
    ``= G/(G-1) (r_i - mean_g r)``. Needs ``group_size >= 2``."""
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2")
    g = _groups(rewards, group_size)
    loo_mean = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - loo_mean).reshape(-1)


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv 1506.02438) over right-padded completions.

    ``delta_t = r_t + gamma V_{t+1} - V_t`` (``V`` after the last valid token is 0), ``A_t = sum_l (gamma lam)^l
    delta_{t+l}``; returns ``(advantages, returns = A + V)``, both zero on padding. ``rewards``, ``values``,
    ``mask``: ``[B, T]``.
    """
    if not (rewards.shape == values.shape == mask.shape):
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, mask {tuple(mask.shape)} differ")
    m = mask.float()
    r, v = rewards.detach().float() * m, values.detach().float() * m
    adv = torch.zeros_like(r)
    last = torch.zeros_like(r[:, 0])
    T = r.shape[1]
    for t in reversed(range(T)):
        next_v = v[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + v) * m


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalize ``values`` to unit variance (and zero mean if ``shift_mean``) over the masked entries."""
    m = mask.float()
    n = m.sum().clamp_min(1)
    mean = (values * m).sum() / n
    var = ((values - mean).square() * m).sum() / n
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m
