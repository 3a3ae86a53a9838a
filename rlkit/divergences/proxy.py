"""Lp-Reg's proxy distribution (arXiv 2510.03222, "Low-probability Tokens Sustain Exploration")."""

from __future__ import annotations

import math

import torch

#: log-probability given to tokens the proxy filters out (probability ~ 0, yet finite so arithmetic stays NaN-free)
FILTERED_LOGPROB = -1.0e4


@torch.no_grad()
def lp_reg_proxy_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    min_p: float = 0.02,
    temperature: float = 1.0,
    threshold: str = "relative",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``log pi_proxy(tokens)`` under Lp-Reg's filtered, renormalized proxy (no gradient).

    With ``p = softmax(logits / temperature)`` over the vocabulary (last dim), the proxy keeps token ``v`` iff
    ``p_v >= min_p * max_w p_w`` (``threshold="relative"``, min-p; ``min_p = kappa = 0.02`` in the paper's scripts)
    or ``p_v >= min_p`` (``threshold="absolute"``), and renormalizes over the kept set:
    ``pi_proxy(v) = p_v / sum_{kept} p_w`` for kept ``v``, ~0 otherwise (:data:`FILTERED_LOGPROB`).
    The logits are those of ``pi_old`` at rollout temperature (or of the reference model).

    ``logits``: ``[..., V]``; ``tokens``: ``[...]`` integer ids. ``chunk_size`` bounds the float32 working memory
    to ``O(chunk_size x V)``. Returns float32 ``[...]``.
    """
    if threshold not in ("relative", "absolute"):
        raise ValueError(f"threshold must be 'relative' or 'absolute', got {threshold!r}")
    if not 0.0 < min_p <= 1.0:
        raise ValueError(f"min_p must be in (0, 1], got {min_p}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    vocab = logits.shape[-1]
    flat, flat_tok = logits.reshape(-1, vocab), tokens.reshape(-1)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    step = chunk_size or max(flat.shape[0], 1)
    log_min_p = math.log(min_p)
    for s in range(0, flat.shape[0], step):
        lp = torch.log_softmax(flat[s : s + step].float() / temperature, dim=-1)
        cut = log_min_p + (lp.max(dim=-1, keepdim=True).values if threshold == "relative" else 0.0)
        keep = lp >= cut
        log_z = torch.logsumexp(lp.masked_fill(~keep, float("-inf")), dim=-1)
        tok = flat_tok[s : s + step].unsqueeze(-1)
        tok_lp = lp.gather(-1, tok).squeeze(-1)
        kept = keep.gather(-1, tok).squeeze(-1)
        out[s : s + step] = torch.where(kept, tok_lp - log_z, torch.full_like(tok_lp, FILTERED_LOGPROB))
    return out.reshape(tokens.shape)
