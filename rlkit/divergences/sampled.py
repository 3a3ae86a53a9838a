"""Token-level divergence estimators from the log-probs of sampled tokens only.

These never need the full vocabulary: each sampled token ``o_t`` carries ``logprobs = log pi_theta(o_t)`` and
``ref_logprobs = log pi_ref(o_t)``; ``d = logprobs - ref_logprobs = log u`` with ``u = pi_theta / pi_ref``.
"""

from __future__ import annotations

import torch

from .generators import NAMED_SCALE, canonical, f_of_logu, fprime_at_one

KL_ESTIMATORS = ("k1", "k2", "k3", "abs", "k1+", "k3+")


def _k3(d: torch.Tensor, log_ratio_clamp: float | None, value_clamp: float | None) -> torch.Tensor:
    neg = -d  # log(pi_ref / pi)
    if log_ratio_clamp is not None:
        neg = torch.clamp(neg, -log_ratio_clamp, log_ratio_clamp)
    value = torch.expm1(neg) - neg  # r - log r - 1 with r = pi_ref / pi
    if value_clamp is not None:
        value = torch.clamp(value, -value_clamp, value_clamp)
    return value


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: str = "k3",
    log_ratio_clamp: float | None = 20.0,
    value_clamp: float | None = 10.0,
) -> torch.Tensor:
    """Per-token estimate of the reverse KL ``KL(pi_theta || pi_ref)`` from tokens sampled from ``pi_theta``.

    With ``d = logprobs - ref_logprobs`` (Schulman, "Approximating KL Divergence", 2020):

    * ``k1  = d``                          unbiased value; zero expected gradient on-policy (use it in the reward)
    * ``k2  = d^2 / 2``                    biased value; its gradient is the reverse-KL gradient on-policy
    * ``k3  = exp(-d) + d - 1``            (= r - log r - 1, r = pi_ref/pi) unbiased, >= 0, low variance; verl's
      ``low_var_kl``, TRL GRPO, OpenRLHF ``k3``. The log-ratio is clamped to ``[-log_ratio_clamp, log_ratio_clamp]``
      before ``exp`` and the value to ``[-value_clamp, value_clamp]`` (defaults 20 and 10; ``None`` disables).
      Clamps apply to ``k3`` and ``k3+`` only.
    * ``abs = |d|``
    * ``k1+``, ``k3+``: straight-through: the value of k1 / k3, the gradient of k2
      (``k2 - k2.detach() + value.detach()``), so a penalty placed in the loss has the right gradient while the
      logged value stays unbiased.

    Direction: reverse KL, ``KL(pi_theta || pi_ref)``; the samples must come from ``pi_theta`` (or ``pi_old``;
    multiply by the importance ratio yourself for off-policy correction).

    Returns a tensor shaped like ``logprobs`` (computed in at least float32).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ in shape"
        )
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    d = logprobs.to(dtype) - ref_logprobs.to(dtype)
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "abs":
        return d.abs()
    if estimator == "k3":
        return _k3(d, log_ratio_clamp, value_clamp)
    k2 = 0.5 * d.square()
    value = d if estimator == "k1+" else _k3(d, log_ratio_clamp, value_clamp)
    return k2 - k2.detach() + value.detach()


def f_divergence_sampled(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    divergence: str,
    sampled_from: str = "policy",
    alpha: float = 0.5,
    control_variate: bool = True,
    log_ratio_clamp: float | None = 20.0,
) -> torch.Tensor:
    """Per-sample unbiased estimate of the same divergence that :func:`f_divergence` computes exactly.

    ``D_f(pi || pi_ref) = E_{x~pi_ref}[f(u)]`` with ``u = pi(x)/pi_ref(x)`` (generators in
    :mod:`rlkit.divergences.generators`). Two sampling schemes:

    * ``sampled_from="ref"`` (DPH-RL's rehearsal: responses pre-sampled from the reference / initial policy):
      ``g = f(u) - f'(1) (u - 1)``.
    * ``sampled_from="policy"`` (on-policy): importance-weight by ``pi_ref/pi = 1/u``:
      ``g = [f(u) - f'(1) (u - 1)] / u``.

    The term ``f'(1)(u - 1)`` is a control variate with zero mean under ``pi_ref`` (and ``(1/u - 1)`` under
    ``pi``); it makes every estimate non-negative (convexity) and lowers variance. It reproduces the known
    estimators: reverse KL from the policy is Schulman's k3 ``exp(-d) + d - 1``; forward KL from the reference is
    DPH-RL's ``u - log u - 1``; forward KL from the policy is RAPO's ``rho log rho - rho + 1`` with ``rho = 1/u``.
    ``js`` is the standard Jensen-Shannon divergence (half of ``D_{f_js}``), as in :func:`f_divergence`.

    Unbiasedness holds for the value. The gradient obtained by differentiating the estimate (pathwise, ignoring
    the sampling distribution) is the exact gradient of the divergence when the samples come from ``pi_ref``; for
    on-policy samples it is not (e.g. k3's pathwise gradient is that of forward KL): use ``kl_penalty`` with
    ``k2``/``k3+`` for a reverse-KL gradient in the loss.

    ``log_ratio_clamp`` clamps ``d`` before ``exp`` (default 20; ``None`` disables; unbiasedness holds for
    ``|d|`` below it). Returns a tensor shaped like ``logprobs``.
    """
    if sampled_from not in ("policy", "ref"):
        raise ValueError(f"sampled_from must be 'policy' or 'ref', got {sampled_from!r}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ in shape"
        )
    name = canonical(divergence, alpha)
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    d = logprobs.to(dtype) - ref_logprobs.to(dtype)
    if log_ratio_clamp is not None:
        d = torch.clamp(d, -log_ratio_clamp, log_ratio_clamp)
    g = f_of_logu(name, d, alpha)
    slope = fprime_at_one(name)
    if control_variate and slope != 0.0:
        g = g - slope * torch.expm1(d)
    if sampled_from == "policy":
        g = g * torch.exp(-d)
    return g * NAMED_SCALE.get(name, 1.0)
