"""Penalties whose *expected gradient* is the gradient of the divergence they name.

An estimator can be unbiased for a divergence's value and still push the policy along another divergence's
gradient (shared/docs/regularizers.md, section 2b): differentiating Schulman's k3 on policy samples gives
``E_a[(1 - r) grad log pi(a)]`` with ``r = pi_ref/pi``, which is the gradient of the *forward* KL. The functions
here separate the two choices: a per-token penalty is ``value`` (an unbiased estimate, what is logged and what
the loss's value adds up to) with a gradient given by a *surrogate*,

    penalty = sg(value) + sg(c) * (logprobs - sg(logprobs)),

so that ``E[grad penalty] = E[c grad log pi(a_t|s_t)]``. ``sg`` is stop-gradient. Notation: ``d = log pi(a) -
log pi_ref(a)`` of the sampled token, ``u = exp(d)``, ``D_f(pi || pi_ref) = E_{a~pi_ref}[f(u)]`` (generators in
:mod:`rlkit.divergences.generators`), states ``s_t`` are prompt + the completion's first ``t`` tokens.

Token level (``gradient="token"``): the per-visited-state divergence, states held fixed (what every peer library
means by a KL "in the loss"). At one state, ``grad D = sum_a f'(u_a) grad pi(a) = E_{a~pi}[f'(u_a) grad log
pi(a)]``, so on policy samples ``c_t = s (f'(u_t) - f'(1))`` (``s``: the named-divergence scale, 1/2 for JS; the
baseline ``f'(1)`` has zero mean and lowers variance):

==============  ===================================  ============================================
divergence      ``c_t`` (policy samples)             equals
==============  ===================================  ============================================
reverse KL      ``d``                                k2's gradient factor
forward KL      ``1 - 1/u`` (``= 1 - rho``)          k3's gradient factor (hence k3 -> forward KL)
JS              ``(log 2 + logsigmoid(d)) / 2``      ``f'_js(u) / 2``
alpha           ``(1 - u^-a) / a``                   ``f'_alpha(u)``
==============  ===================================  ============================================

On reference samples (``a ~ pi_ref``, DPH-RL's rehearsal) no surrogate is needed: the pathwise gradient of
``f(u) - f'(1)(u - 1)`` is ``E_{pi_ref}[f'(u) u grad log pi] = grad D`` exactly.

Sequence level (``gradient="sequence"``): the gradient of the divergence between the *sequence* distributions
``P(y) = prod_t pi(a_t|s_t)``. By the chain rule both KLs are sums of per-state KLs over visited states:

* reverse KL, ``KL(P || P_ref) = E_P[sum_t KL_t]``. Its gradient adds score-function terms for the later states
  an action leads to: ``c_t = d_t + sum_{t' > t} k_t'`` with ``k`` an unbiased per-state estimate (k3, whose
  log-ratio alone is clamped at ``log_ratio_clamp``). Variance grows with the length of the future, as for any
  return. On reference samples: ``E_{P_ref}[sum_t U_{<t} g_t]`` with prefix weights ``U_{<t} = prod_{t'<t} u_t'``
  and ``g = u log u - u + 1``, differentiated pathwise (``U`` included), which is exact.
* forward KL, ``KL(P_ref || P) = E_{P_ref}[sum_t FKL_t]``: the states are the reference's, so policy samples
  need prefix importance weights ``W_t = prod_{t'<t} pi_ref(a_t')/pi(a_t')``: ``c_t = W_t (1 - 1/u_t)``, value
  ``W_t (rho log rho - rho + 1)``. The weights' variance grows exponentially with the divergence and the length:
  they are logged (``weight_max``) and may be capped (``weight_cap``, biased, off by default: no silent
  truncation; only the exponent is bounded at ``log_ratio_clamp``, 20, i.e. weights above e^20 = 4.9e8, to keep
  ``exp`` finite). On reference samples token and sequence levels coincide (``-grad log P`` on ``P_ref``'s samples).

All functions are pure tensor code. Shapes ``[B, T]``, right-padded, ``mask`` selects completion tokens; rows
are independent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .generators import NAMED_SCALE, canonical
from .sampled import _k3, f_divergence_sampled

GRADIENTS = ("token", "sequence")
#: divergences with a sequence-level gradient (the chain rule makes them sums of per-state divergences)
SEQUENCE_DIVERGENCES = ("reverse_kl", "forward_kl")


def straight_through(value: torch.Tensor, factor: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """``sg(value) + sg(factor) * (logprobs - sg(logprobs))``: the value of ``value``, the gradient of
    ``factor * log pi``."""
    return value.detach() + factor.detach() * (logprobs - logprobs.detach())


def score_factor(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    divergence: str,
    alpha: float = 0.5,
    log_ratio_clamp: float | None = 20.0,
) -> torch.Tensor:
    """``s (f'(u) - f'(1))`` at the sampled tokens (no gradient): on policy samples,
    ``E_a[factor * grad log pi(a)]`` is the gradient of the named per-state divergence (``s`` = the named scale)."""
    name = canonical(divergence, alpha)
    d = _log_ratio(logprobs, ref_logprobs, log_ratio_clamp).detach()
    if name == "reverse_kl":  # f' = log u + 1
        c = d
    elif name == "forward_kl":  # f' = -1/u
        c = -torch.expm1(-d)
    elif name == "js":  # f' = log(2u/(1+u))
        c = math.log(2.0) + F.logsigmoid(d)
    elif name == "alpha":  # f' = (1 - u^-a)/a
        c = -torch.expm1(-alpha * d) / alpha
    elif name == "chi2":
        c = 2.0 * torch.expm1(d)
    elif name == "tv":
        c = 0.5 * torch.sign(d)
    else:  # pragma: no cover - canonical() validated the name
        raise ValueError(divergence)
    # every c above is already f'(u) - f'(1): the baseline f'(1) has zero mean under pi and lowers the variance
    return c * NAMED_SCALE.get(name, 1.0)


def future_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``out[:, t] = sum_{t' > t} values[:, t'] mask[:, t']`` (exclusive reverse cumulative sum)."""
    v = values * mask.to(values.dtype)
    return v.flip(-1).cumsum(-1).flip(-1) - v


def prefix_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``out[:, t] = sum_{t' < t} values[:, t'] mask[:, t']`` (exclusive cumulative sum)."""
    v = values * mask.to(values.dtype)
    return v.cumsum(-1) - v


def _log_ratio(logprobs, ref_logprobs, clamp):
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ in shape"
        )
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    d = logprobs.to(dtype) - ref_logprobs.to(dtype)
    return d if clamp is None else torch.clamp(d, -clamp, clamp)


def prefix_weights(
    log_ratio: torch.Tensor, mask: torch.Tensor, cap: float | None = None, log_clamp: float | None = None
) -> torch.Tensor:
    """``W_t = exp(sum_{t'<t} log_ratio_t')`` (``W_0 = 1``), optionally capped at ``cap`` (biased; explicit).
    ``log_clamp`` bounds the exponent only to keep it finite (``None``: unbounded)."""
    logw = prefix_sum(log_ratio, mask)
    if log_clamp is not None:
        logw = logw.clamp(max=log_clamp)
    w = torch.exp(logw)
    return w if cap is None else w.clamp(max=cap)


def sampled_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    divergence: str,
    samples: str = "policy",
    gradient: str = "token",
    alpha: float = 0.5,
    value: torch.Tensor | None = None,
    log_ratio_clamp: float | None = 20.0,
    weight_cap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token penalty ``[B, T]`` from sampled tokens only, whose expected gradient is the named divergence's
    (see the module docstring for the derivations) and whose value is an unbiased estimate of it.

    ``samples``: ``"policy"`` (on-policy, ``a ~ pi``) or ``"reference"`` (``a ~ pi_ref``). ``gradient``:
    ``"token"`` (per visited state) or ``"sequence"`` (reverse/forward KL between sequence distributions).
    ``value``: the per-token value estimate to report for policy samples (default: the control-variate
    estimator of :func:`f_divergence_sampled`; the KL regularizer passes k1/k2/k3). Summed over a sequence, the
    value estimates the sequence-level divergence when ``gradient="sequence"`` (and, for reverse KL, always).
    Returns ``(penalty, stats)``; ``stats["weight_max"]`` is the largest importance weight where weights are used.
    """
    if samples not in ("policy", "reference"):
        raise ValueError(f"samples must be 'policy' or 'reference', got {samples!r}")
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
    name = canonical(divergence, alpha)
    if gradient == "sequence" and name not in SEQUENCE_DIVERGENCES:
        raise ValueError(f"gradient 'sequence' is defined for {' and '.join(SEQUENCE_DIVERGENCES)}, not {name!r}")
    m = mask.to(torch.bool)
    stats: dict[str, torch.Tensor] = {}
    if samples == "reference":
        g = f_divergence_sampled(logprobs, ref_logprobs, name, "ref", alpha, True, log_ratio_clamp)
        if gradient == "sequence" and name == "reverse_kl":  # E_{P_ref}[sum_t U_{<t} g_t], pathwise with U
            d = _log_ratio(logprobs, ref_logprobs, log_ratio_clamp)
            u_prefix = prefix_weights(d, m, weight_cap, log_ratio_clamp)
            stats["weight_max"] = u_prefix.detach().masked_fill(~m, 0).max()
            g = u_prefix * g
        return torch.where(m, g, torch.zeros_like(g)), stats
    value = (
        value
        if value is not None
        else f_divergence_sampled(logprobs, ref_logprobs, name, "policy", alpha, True, log_ratio_clamp)
    )
    factor = score_factor(logprobs, ref_logprobs, name, alpha, log_ratio_clamp)
    if gradient == "sequence" and name == "reverse_kl":  # + sum over later tokens of their (unbiased) KL
        d = _log_ratio(logprobs, ref_logprobs, log_ratio_clamp).detach()
        factor = factor + future_sum(_k3(d, None, None), m)
    elif gradient == "sequence":  # forward KL: the reference's state distribution via prefix weights
        d = _log_ratio(logprobs, ref_logprobs, log_ratio_clamp).detach()
        w = prefix_weights(-d, m, weight_cap, log_ratio_clamp)
        stats["weight_max"] = w.masked_fill(~m, 0).max()
        factor, value = w * factor, w * value.detach()
    out = straight_through(value, factor, logprobs.to(value.dtype))
    return torch.where(m, out, torch.zeros_like(out)), stats


def exact_sequence_penalty(
    per_state: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    mask: torch.Tensor,
    divergence: str,
    weight_cap: float | None = None,
    log_ratio_clamp: float | None = 20.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sequence-level penalty from the exact per-state divergences ``per_state`` ``[B, T]`` (differentiable, at
    the policy's sampled states): reverse KL adds ``sg(sum_{t'>t} D_t') * grad log pi(a_t)``; forward KL
    weights each state by ``sg(W_t)`` (needs ``ref_logprobs`` of the sampled tokens). The value of the sum over a
    sequence is an unbiased estimate of the sequence-level divergence."""
    name = canonical(divergence)
    m = mask.to(torch.bool)
    stats: dict[str, torch.Tensor] = {}
    if name == "reverse_kl":
        out = per_state + straight_through(
            torch.zeros_like(per_state), future_sum(per_state.detach(), m), logprobs.to(per_state.dtype)
        )
    elif name == "forward_kl":
        if ref_logprobs is None:
            raise ValueError("the forward KL's sequence gradient needs the reference log-probs of the sampled tokens")
        d = _log_ratio(logprobs, ref_logprobs, log_ratio_clamp).detach()
        w = prefix_weights(-d, m, weight_cap, log_ratio_clamp)
        stats["weight_max"] = w.masked_fill(~m, 0).max()
        out = w.to(per_state.dtype) * per_state
    else:
        raise ValueError(f"gradient 'sequence' is defined for {' and '.join(SEQUENCE_DIVERGENCES)}, not {name!r}")
    return torch.where(m, out, torch.zeros_like(out)), stats
