"""DPH-RL's rehearsal term: divergences on responses pre-sampled from the initial policy (pure tensors).

The driver side (pre-sampling, the D_pef / D_exp split, the per-step batches) is :mod:`rlkit.trainer.rehearsal`.
"""

from __future__ import annotations

import torch

from rlkit.regularizers import PolicyBatch

from .aggregation import masked_mean


def on_reference_samples(reg) -> bool:
    """Whether a regularizer estimates its divergence on reference samples (``samples: reference``, sampled mode):
    it belongs to the rehearsal batch, not to the on-policy GRPO batch."""
    return getattr(reg.cfg, "samples", "policy") == "reference" and getattr(reg.cfg, "mode", "sampled") == "sampled"


def rehearsal_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, ref_logprobs: torch.Tensor, regularizers, step: int = 0
) -> tuple[torch.Tensor, dict[str, float]]:
    """The rehearsal term: ``sum_r coef_r * sum_t m_t g_r(u_t) / sum_t m_t`` over the rehearsal tokens (token mean),
    ``u_t = exp(logprobs_t - ref_logprobs_t)``, with each regularizer's reference-sample estimator ``g_r`` (forward
    KL: ``u - log u - 1``), evaluated through the regularizer itself on a ``PolicyBatch(sampled_from="ref")``, so
    its coefficient schedule applies. Returns ``(loss, metrics)`` with ``rehearsal/<label>/value`` (the token-mean
    divergence estimate, coefficient not applied) and ``rehearsal/<label>/coef``."""
    pb = PolicyBatch(
        logprobs=logprobs,
        mask=mask,
        sampled_from="ref",
        step=step,
        ref_logprobs={r.reference_key: ref_logprobs for r in regularizers},
    )
    loss = logprobs.new_zeros(())
    metrics: dict[str, float] = {}
    for reg in regularizers:
        out = reg(pb)
        loss = loss + masked_mean(out.per_token, mask)
        metrics[f"rehearsal/{reg.label}/value"] = out.metrics[f"{reg.label}/value"]
        metrics[f"rehearsal/{reg.label}/coef"] = out.metrics[f"{reg.label}/coef"]
    metrics["rehearsal/loss"] = float(loss.detach())
    return loss, metrics
