"""DPO and f-DPO (Rafailov et al. 2023, arXiv 2305.18290; Wang et al. 2023, arXiv 2309.16240), cDPO, IPO."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlkit.divergences.generators import DPO_DIVERGENCES, dpo_score

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def fdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    divergence: str = "reverse_kl",
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> torch.Tensor:
    """Per-pair f-DPO loss.

    With sequence log-probs (summed over completion tokens) and ``u = pi_theta(y|x) / pi_ref(y|x)``, the implicit
    reward is ``beta f'(u)`` and ``h = f'(u_w) - f'(u_l)`` (w = chosen, l = rejected; constants in ``f'`` cancel):

    * ``sigmoid``: ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``; ``eps = label_smoothing`` gives
      conservative DPO (cDPO); ``eps = 0`` and ``reverse_kl`` (``f'(u) = log u + 1``) is standard DPO.
    * ``ipo``: ``(h - 1/(2 beta))^2`` (Azar et al. 2023, arXiv 2310.12036); TRL's IPO feeds *length-averaged*
      log-probs: pass those to match it.
    * ``hinge``: ``max(0, 1 - beta h)`` (SLiC).

    ``divergence``: ``reverse_kl`` (``log u``), ``forward_kl`` (``-1/u``), ``js`` (``log(2u/(1+u))``), ``alpha``
    (``(1 - u^(-alpha))/alpha``; paper parameterisation: alpha -> 0 is reverse KL, alpha = 1 forward KL), ``chi2``.
    **TRL's** ``DPOConfig.f_alpha_divergence_coef`` depends on the TRL version: TRL >= 0.29 writes
    ``f'(t) = (t^(a'-1) - 1)/(a'-1)``, so ``f_alpha_divergence_coef = 1 - alpha`` (they agree only at 0.5); TRL
    0.20-0.28 wrote ``(1 - u^-a)/a``, the paper's form, so there ``f_alpha_divergence_coef = alpha``
    (``tests/test_fidelity_fixes.py`` checks the conversion against the installed TRL's own loss).
    Returns the loss per pair, shape ``[B]``.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(DPO_LOSS_TYPES)}")
    if divergence not in DPO_DIVERGENCES:
        raise ValueError(f"unknown f-DPO divergence {divergence!r}; choose one of {', '.join(DPO_DIVERGENCES)}")
    if divergence == "alpha" and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"f-DPO alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    dtype = torch.promote_types(policy_chosen_logps.dtype, torch.float32)
    chosen = policy_chosen_logps.to(dtype) - ref_chosen_logps.to(dtype)
    rejected = policy_rejected_logps.to(dtype) - ref_rejected_logps.to(dtype)
    h = dpo_score(divergence, chosen, alpha) - dpo_score(divergence, rejected, alpha)
    if loss_type == "ipo":
        return (h - 1.0 / (2.0 * beta)).square()
    if loss_type == "hinge":
        return torch.relu(1.0 - beta * h)
    z = beta * h
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    divergence: str = "reverse_kl",
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean :func:`fdpo_loss` over pairs plus metrics: implicit rewards ``beta log u`` of chosen/rejected, their
    margin, reward accuracy (fraction of pairs where the chosen implicit reward is higher), and the expected
    calibration error of the implicit preference model ``p = sigmoid(beta * h)`` (h: the f-DPO score difference;
    f-DPO, Wang et al. 2023, report ECE): see :func:`preference_ece`."""
    per_pair = fdpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta,
        divergence,
        alpha,
        label_smoothing,
        loss_type,
    )
    with torch.no_grad():
        rc = beta * (policy_chosen_logps.float() - ref_chosen_logps.float())
        rr = beta * (policy_rejected_logps.float() - ref_rejected_logps.float())
        metrics = {
            "loss/dpo": per_pair.mean().item(),
            "rewards/chosen": float(rc.mean()),
            "rewards/rejected": float(rr.mean()),
            "rewards/margin": float((rc - rr).mean()),
            "rewards/accuracy": float((rc > rr).float().mean()),
        }
        h = dpo_score(divergence, policy_chosen_logps.float() - ref_chosen_logps.float(), alpha) - dpo_score(
            divergence, policy_rejected_logps.float() - ref_rejected_logps.float(), alpha
        )
        metrics["rewards/ece"] = preference_ece(torch.sigmoid(beta * h))
    return per_pair.mean(), metrics


def preference_ece(p_chosen: torch.Tensor, n_bins: int = 10) -> float:
    """Expected calibration error of preference predictions, the chosen response being the true label:

        confidence_i = max(p_i, 1 - p_i),  correct_i = [p_i > 1/2]
        ECE = sum_b |B_b| / N * | mean_{i in B_b} correct_i - mean_{i in B_b} confidence_i |

    over ``n_bins`` equal-width confidence bins on [1/2, 1] (Guo et al. 2017, "On Calibration of Modern Neural
    Networks", applied to the implicit reward model as in f-DPO). 0 for a perfectly calibrated model."""
    p = p_chosen.detach().double().flatten()
    if p.numel() == 0:
        return float("nan")
    conf = torch.maximum(p, 1 - p)
    correct = (p > 0.5).double()
    edges = torch.linspace(0.5, 1.0, n_bins + 1, dtype=torch.float64)
    idx = torch.clamp(torch.bucketize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            ece += sel.double().mean() * (correct[sel].mean() - conf[sel].mean()).abs()
    return float(ece)
