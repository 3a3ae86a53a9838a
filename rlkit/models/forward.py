"""Model-side helpers shared by workers: batching prompt+completion sequences and completion log-probs.

Layout: prompts are left-padded to ``P`` and completions right-padded to ``T``, so completion token ``t`` of every
row sits at position ``P + t`` and is predicted by the logits at ``P + t - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlkit.models.full_forward import full_completion_logits
from rlkit.models.prefix import shared_prefix_outputs


def collate(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int) -> dict:
    """Tensors for a batch of (prompt ids, completion ids): ``input_ids``, ``attention_mask``, ``position_ids``,
    ``completion_ids`` ``[B, T]``, ``completion_mask`` ``[B, T]`` and ``prompt_len`` ``P``."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    P = max(len(p) for p in prompts)
    T = max(1, max(len(c) for c in completions))
    B = len(prompts)
    input_ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + T), dtype=torch.long)
    comp_mask = torch.zeros((B, T), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        input_ids[i, P - len(p) : P] = torch.as_tensor(list(p), dtype=torch.long)
        attention[i, P - len(p) : P] = 1
        if len(c):
            input_ids[i, P : P + len(c)] = torch.as_tensor(list(c), dtype=torch.long)
            attention[i, P : P + len(c)] = 1
            comp_mask[i, : len(c)] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp_min(0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "position_ids": position_ids,
        "completion_ids": input_ids[:, P:],
        "completion_mask": comp_mask,
        "prompt_len": P,
    }


def completion_logits(model, batch: dict, temperature: float = 1.0, group: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[B, T, V]`` that predict each completion token, divided by the sampling temperature.

    Only the last ``T + 1`` positions go through the LM head (``logits_to_keep``, which transformers' causal LMs
    accept): the ``[B, P, V]`` logits of the prompt are never computed. Models without it fall back to slicing
    (:func:`rlkit.models.full_forward.full_completion_logits`). ``group``
    (:func:`rlkit.models.prefix.prompt_groups`): each distinct prompt runs once
    (:func:`rlkit.models.prefix.shared_prefix_outputs`)."""
    if group is not None:
        logits = shared_prefix_outputs(model, batch, group)
    else:
        logits = full_completion_logits(model, batch)
    return logits / temperature if temperature != 1.0 else logits


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[tokens]`` as ``logit - logsumexp`` (no ``[B, T, V]`` log-softmax tensor is kept)."""
    logits32 = logits.float()
    return logits32.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits32, dim=-1)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
    """Per-position entropy ``H = -sum_v p_v log p_v`` of ``softmax(logits)`` (float32), ``chunk_rows`` positions
    at a time, so the float32 temporaries are ``O(chunk_rows x V)`` rather than ``[B, T, V]``."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for s in range(0, flat.shape[0], chunk_rows):
        lp = torch.log_softmax(flat[s : s + chunk_rows].float(), dim=-1)
        out[s : s + chunk_rows] = -torch.einsum("nv,nv->n", lp.exp(), lp)
    return out.reshape(logits.shape[:-1])
