"""DPO and f-DPO (Rafailov et al. 2023, arXiv 2305.18290; Wang et al. 2023, arXiv 2309.16240), cDPO, IPO."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlkit.divergences.generators import DPO_DIVERGENCES, dpo_score

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def fdpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
              divergence: str = "reverse_kl", alpha: float = 0.5, label_smoothing: float = 0.0,
              loss_type: str = "sigmoid") -> torch.Tensor:
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
    **TRL's** ``DPOConfig.f_alpha_divergence_coef`` is ``1 - alpha`` in this notation (they agree only at 0.5).
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


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
             divergence: str = "reverse_kl", alpha: float = 0.5, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid") -> tuple[torch.Tensor, dict[str, float]]:
    """Mean :func:`fdpo_loss` over pairs plus metrics: implicit rewards ``beta log u`` of chosen/rejected, their
    margin, and reward accuracy (fraction of pairs where the chosen implicit reward is higher)."""
    per_pair = fdpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                         divergence, alpha, label_smoothing, loss_type)
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
    return per_pair.mean(), metrics
