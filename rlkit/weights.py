"""Regularizer weights: per-sample (DADS, PACED), scheduled and adaptive (target-KL) coefficients. Pure math."""

from __future__ import annotations

import math

import torch


def dads_weights(accuracy: torch.Tensor, advantages: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """Per-sample KL weights of DADS (Difficulty-Adaptive Divergence Shaping; APO, arXiv 2506.21655).

    For a prompt with G samples and accuracy ``acc`` (fraction correct), each sample with **positive advantage**
    gets ``w = 1 - exp(-eta * acc)``: on hard prompts (low acc) the rare correct answers are barely held back by the
    KL, on easy prompts the KL keeps nearly its full weight. ``w = 1`` when ``acc`` is 0 or 1 (no learning signal)
    and for samples with non-positive advantage. The per-sample KL (the paper: token-mean k3 toward the initial
    model, coefficient 1e-3) is multiplied by ``w``. ``eta`` is the sharpness (UNVERIFIED default: the reference
    code's value was not available; 1.0 here).

    ``accuracy``: ``[B]`` (each sample's group accuracy); ``advantages``: ``[B]`` or ``[B, T]`` (a sample counts as
    positive when its advantage, summed over tokens if 2-D, is > 0). Returns float32 ``[B]`` in ``(0, 1]``.
    """
    if eta <= 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    acc = accuracy.detach().float()
    adv = advantages.detach().float()
    if adv.dim() == 2:
        adv = adv.sum(-1)
    if acc.shape != adv.shape:
        raise ValueError(f"accuracy {tuple(acc.shape)} and advantages {tuple(adv.shape)} must both be [B]")
    w = -torch.expm1(-eta * acc)
    trivial = (acc <= 0) | (acc >= 1)
    return torch.where((adv > 0) & ~trivial, w, torch.ones_like(w))


def paced_weights(accuracy: torch.Tensor, a: float = 1.0, b: float = 1.0) -> torch.Tensor:
    """PACED-style Beta-kernel per-sample weight ``w(p) = p^a (1 - p)^b`` (normalized to max 1 over p in [0,1])."""
    p = accuracy.detach().float().clamp(0, 1)
    peak = (a / (a + b)) ** a * (b / (a + b)) ** b if a + b > 0 else 1.0
    return p.pow(a) * (1 - p).pow(b) / peak


def scheduled_coef(step: int, start: float, end: float, total_steps: int, warmup_steps: int = 0,
                   kind: str = "linear") -> float:
    """Coefficient at ``step``: ``start`` during warmup, then ``linear`` or ``cosine`` from ``start`` to ``end``
    over ``total_steps`` (held at ``end`` afterwards)."""
    if step < warmup_steps:
        return start
    span = max(total_steps - warmup_steps, 1)
    frac = min(max((step - warmup_steps) / span, 0.0), 1.0)
    if kind == "linear":
        return start + (end - start) * frac
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {kind!r}; choose 'linear' or 'cosine'")


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences").

    After each step with observed KL ``kl``: ``err = clip(kl / target - 1, -0.2, 0.2)``;
    ``beta <- beta * (1 + err * n_steps / horizon)``. The state is a plain dict for checkpoints.
    """

    def __init__(self, init_coef: float, target: float, horizon: int = 10000):
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.value, self.target, self.horizon = float(init_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        err = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), int(state["horizon"])
