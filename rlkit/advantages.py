"""Advantage estimators: group-relative (GRPO, Dr. GRPO), RLOO and GAE; APO's STCR scaling. Pure tensor
functions."""

from __future__ import annotations

import math

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


def stcr_scale(
    advantages: torch.Tensor, lengths: torch.Tensor, correct: torch.Tensor, group_size: int, base: float = 1.00001
) -> torch.Tensor:
    """STCR, APO's advantage scaling for over-long wrong answers (arXiv 2506.21655, the companion of DADS).

    Per group of ``group_size`` samples, ``L+`` is the mean length of the correct responses. An incorrect response
    ``i`` longer than that gets its advantage scaled by ``1 + w_i`` with ``w_i = 1 - base^-(L_i - L+)`` (``base``
    1.00001 in the paper and its code, so ``w_i ~ 1e-5 (L_i - L+)`` for moderate excess lengths and ``w_i < 1``
    always); every other sample, and every sample of a group with no correct response, keeps its advantage
    (``w_i = 0``). With GRPO's negative advantages for wrong answers, longer wrong answers are pushed down harder.

    Reference code (View-R1, ``openrlhf/trainer/ppo_utils/experience_maker.py``, ``use_stcr``): the same rule,
    applied after GRPO's group normalization (its ``group_norm`` estimator only), with correctness read as the
    integer part of the reward; rlkit applies it to the group advantages of any GRPO estimator (grpo, drgrpo, rloo)
    with the reward's ``correct`` flags.

    ``advantages``: ``[B]`` or ``[B, T]``; ``lengths``: ``[B]`` completion lengths (tokens); ``correct``: ``[B]``
    0/1 flags or bool (> 0.5 counts as correct). Returns the scaled advantages, the same shape as ``advantages``.
    """
    if base <= 1:
        raise ValueError(f"STCR base must be > 1, got {base}")
    n = lengths.numel()
    if correct.numel() != n or advantages.shape[0] != n:
        raise ValueError(
            f"advantages {tuple(advantages.shape)}, lengths {tuple(lengths.shape)} and correct "
            f"{tuple(correct.shape)} must have the same number of samples"
        )
    length = _groups(lengths.detach().float().reshape(-1), group_size)
    ok = _groups((correct.detach().float().reshape(-1) > 0.5).float(), group_size)
    n_ok = ok.sum(1, keepdim=True)
    mean_ok = (length * ok).sum(1, keepdim=True) / n_ok.clamp_min(1)
    excess = (length - mean_ok) * (1 - ok)
    w = torch.where((excess > 0) & (n_ok > 0), -torch.expm1(-excess * math.log(base)), torch.zeros_like(excess))
    scale = (1 + w).reshape(-1).to(advantages.dtype)
    return advantages * (scale.unsqueeze(-1) if advantages.dim() == 2 else scale)


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv 1506.02438) over right-padded completions.

    ``delta_t = r_t + gamma V_{t+1} - V_t`` (``V`` after the last valid token is 0), ``A_t = sum_l (gamma lam)^l
    delta_{t+l}``; returns ``(advantages, returns = A + V)``, both zero on padding. ``rewards``, ``values``,
    ``mask``: ``[B, T]``.
    """
    if not (rewards.shape == values.shape == mask.shape):
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, mask {tuple(mask.shape)} differ"
        )
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
