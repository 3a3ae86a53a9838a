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
    ``completion_ids`` ``[B, T]``, ``completion_mask`` ``[B, T]`` and ``prompt_len`` ``P``.

    The rows are laid out as Python lists and become tensors in one call each: per-row slice assignments cost a
    few torch ops per row (about 2 ms for the default job's 128 rows, on the GIL that an async rollout thread
    needs too)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    prompt_rows, completion_rows = [_ids(p) for p in prompts], [_ids(c) for c in completions]
    P = max(len(p) for p in prompt_rows)
    T = max(1, max(len(c) for c in completion_rows))
    ids, attention, comp_mask = [], [], []
    for p, c in zip(prompt_rows, completion_rows):
        left, right = P - len(p), T - len(c)
        ids.append([pad_id] * left + p + c + [pad_id] * right)
        attention.append([0] * left + [1] * (len(p) + len(c)) + [0] * right)
        comp_mask.append([1.0] * len(c) + [0.0] * right)
    input_ids = torch.tensor(ids, dtype=torch.long)
    attention_mask = torch.tensor(attention, dtype=torch.long)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "completion_ids": input_ids[:, P:],
        "completion_mask": torch.tensor(comp_mask, dtype=torch.float32),
        "prompt_len": P,
    }


def _ids(seq) -> list[int]:
    """A row of token ids as a list of Python ints (from a list, tuple, tensor or array)."""
    return [int(t) for t in (seq.tolist() if hasattr(seq, "tolist") else seq)]


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
