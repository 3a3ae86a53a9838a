"""f-divergence generators, written as functions of ``log u``.

Convention (Csiszar): ``D_f(P || Q) = E_{x~Q}[ f(P(x) / Q(x)) ]`` with ``f`` convex and ``f(1) = 0``.
Throughout rlkit, ``P`` is the policy ``pi_theta`` and ``Q`` the reference ``pi_ref``, so ``u = pi / pi_ref`` and

==============  =======================================  =====================  =================================
name            f(u)                                     f'(u)                  named divergence
==============  =======================================  =====================  =================================
``reverse_kl``  u log u                                  log u + 1              KL(pi || pi_ref)   (mode-seeking)
``forward_kl``  -log u                                   -1/u                   KL(pi_ref || pi)   (mass-covering)
``js``          u log u - (u+1) log((u+1)/2)             log(2u / (1+u))        2 JS(pi, pi_ref)
``alpha``       (u^(1-a) - (1-a) u - a) / (a (a-1))      (1 - u^(-a)) / a       alpha-divergence (a -> 0: reverse
                                                                                KL, a = 1: forward KL)
``tv``          |u - 1| / 2                              sign(u - 1) / 2        total variation
``chi2``        (u - 1)^2                                2 (u - 1)              Pearson chi^2(pi || pi_ref)
==============  =======================================  =====================  =================================

``js`` is reported as the *standard* Jensen-Shannon divergence ``1/2 KL(P||M) + 1/2 KL(Q||M)`` (at most log 2),
i.e. half of ``D_{f_js}``; :data:`NAMED_SCALE` holds that factor. The alpha family follows Wang et al. 2023
("Beyond Reverse KL", arXiv 2309.16240); TRL's ``f_alpha_divergence_coef`` equals ``1 - alpha`` in this notation.
Sources: Csiszar 1967; DPH-RL (arXiv 2509.07430) for the use of forward KL / JS as rehearsal penalties.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG2 = math.log(2.0)

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha", "tv", "chi2")
#: divergences that have a usable f' for f-DPO (tv's f' is piecewise constant: zero gradient)
DPO_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha", "chi2")
#: named divergence = NAMED_SCALE * D_f
NAMED_SCALE = {"js": 0.5}


def canonical(divergence: str, alpha: float = 0.5) -> str:
    """Validate ``divergence`` and map the alpha family's end points to the KLs they equal.

    ``alpha`` with ``alpha == 0`` is reverse KL and with ``alpha == 1`` forward KL (exact limits of the family),
    which keeps those two points exact instead of dividing by ``a (a-1) = 0``.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if divergence == "alpha":
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite, got {alpha}")
        if alpha == 0.0:
            return "reverse_kl"
        if alpha == 1.0:
            return "forward_kl"
    return divergence


def f_of_logu(divergence: str, logu: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``f(u)`` evaluated at ``u = exp(logu)`` (``divergence`` must be canonical)."""
    u = torch.exp(logu)
    if divergence == "reverse_kl":
        return u * logu
    if divergence == "forward_kl":
        return -logu
    if divergence == "js":
        # (u + 1) log((u + 1) / 2) with log(u + 1) = softplus(log u)
        return u * logu - (u + 1.0) * (F.softplus(logu) - LOG2)
    if divergence == "alpha":
        a = alpha
        return (torch.exp((1.0 - a) * logu) - (1.0 - a) * u - a) / (a * (a - 1.0))
    if divergence == "tv":
        return 0.5 * torch.expm1(logu).abs()
    if divergence == "chi2":
        return torch.expm1(logu).square()
    raise ValueError(f"unknown divergence {divergence!r}")


def fprime_at_one(divergence: str) -> float:
    """``f'(1)``: the slope of the tangent-line control variate ``f'(1) (u - 1)`` (zero mean under ``Q``)."""
    return {"reverse_kl": 1.0, "forward_kl": -1.0}.get(divergence, 0.0)


def dpo_score(divergence: str, logu: torch.Tensor, alpha: float = 0.5, exp_clamp: float = 80.0) -> torch.Tensor:
    """``f'(u)`` up to an additive constant (constants cancel in f-DPO), at ``u = exp(logu)``.

    reverse_kl: log u; forward_kl: -1/u; js: log(2u/(1+u)) = log 2 + logsigmoid(log u); alpha: (1 - u^(-a))/a;
    chi2: 2(u-1). Exponents are clamped at ``exp_clamp`` (80 keeps float32 finite) as in the reference codes.
    """
    divergence = canonical(divergence, alpha)
    if divergence == "reverse_kl":
        return logu
    if divergence == "forward_kl":
        return -torch.exp(torch.clamp(-logu, max=exp_clamp))
    if divergence == "js":
        return F.logsigmoid(logu)
    if divergence == "alpha":
        # exact f'(u) = (1 - u^(-a)) / a = -expm1(-a log u) / a: no 1/a constant to cancel at small a
        return -torch.expm1(torch.clamp(-alpha * logu, max=exp_clamp)) / alpha
    if divergence == "chi2":
        return 2.0 * torch.exp(torch.clamp(logu, max=exp_clamp))
    raise ValueError(
        f"divergence {divergence!r} has no usable f' for f-DPO; choose one of {', '.join(DPO_DIVERGENCES)}"
    )
