"""Regularizer weights: per-sample (DADS, PACED), scheduled and adaptive (target-KL) coefficients. Pure math."""

from __future__ import annotations

import math

import torch


def dads_weights(accuracy: torch.Tensor, advantages: torch.Tensor, eta: float = math.e) -> torch.Tensor:
    """Per-sample KL weights of DADS (Difficulty-Adaptive Divergence Shaping; APO, arXiv 2506.21655).

    For a prompt with G samples and accuracy ``acc`` (fraction correct; difficulty ``d = 1 - acc``), each sample with
    **positive advantage** gets ``w = 1 - exp(-eta * acc) = 1 - exp(-eta (1 - d))``: on hard prompts (low acc) the
    rare correct answers are barely held back by the KL, on easy prompts the KL keeps nearly its full weight.
    ``w = 1`` when ``acc`` is 0 or 1 (no learning signal) and for samples with non-positive advantage. The
    per-sample KL (the paper: token-mean k3 toward the initial model, coefficient 1e-3) is multiplied by ``w``.

    ``eta`` is the sharpness; the default is Euler's number ``e = 2.718...``, as the reference code (View-R1,
    ``openrlhf/trainer/ray/ppo_actor.py``: ``calculate_kl_weight(d) = 1 - exp(-e (1 - d))`` with ``e =
    math.exp(1)``, 1 at ``d`` in {0, 1}, applied where ``advantage[0] > 0``) runs it. Where rlkit differs from that
    code: a sample is "positive" when its advantage **summed over tokens** is > 0 (the reference reads the first
    token's; the same for GRPO's sequence-level advantages), ``acc`` is the group mean of the reward's ``correct``
    flags (the reference: the integer part of the reward), and ``eta`` is configurable.

    ``accuracy``: ``[B]`` (each sample's group accuracy); ``advantages``: ``[B]`` or ``[B, T]``. Returns float32
    ``[B]`` in ``(0, 1]``.
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


def paced_weights(accuracy: torch.Tensor, a: float = 1.0, b: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """PACED-style Beta-kernel per-sample weight of the group accuracy ``p``: ``w(p) = p^a (1 - p)^b``.

    ``normalize=True`` (the default) divides by the kernel's peak ``(a/(a+b))^a (b/(a+b))^b`` (at ``p = a/(a+b)``),
    so the weights lie in ``[0, 1]`` with maximum 1: at ``a = b = 1`` that is ``4 p (1 - p)``, **4x** the raw
    ``p (1 - p)`` kernel the paper writes, i.e. the regularizer's ``coef`` means "the weight at the peak".
    ``normalize=False`` gives the raw kernel ``p^a (1 - p)^b`` as written (peak ``1/4`` at ``a = b = 1``).
    """
    p = accuracy.detach().float().clamp(0, 1)
    w = p.pow(a) * (1 - p).pow(b)
    if not normalize:
        return w
    peak = (a / (a + b)) ** a * (b / (a + b)) ** b if a + b > 0 else 1.0
    return w / peak


def incorrect_mask(correct: torch.Tensor) -> torch.Tensor:
    """KDRL's reward-guided masking (Xu et al. 2025, "KDRL", arXiv 2506.02208): per-sample weight 1 for incorrect
    responses, 0 for correct ones (the teacher KL is applied only where the student failed). ``correct``: ``[B]``
    0/1 flags (or bool); a sample counts as correct when its flag is > 0.5. Returns float32 ``[B]``."""
    return (correct.detach().float() <= 0.5).float()


def scheduled_coef(
    step: int, start: float, end: float, total_steps: int, warmup_steps: int = 0, kind: str = "linear"
) -> float:
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
