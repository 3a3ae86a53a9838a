"""Model-side helpers shared by workers: batching prompt+completion sequences and completion log-probs.

Layout: prompts are left-padded to ``P`` and completions right-padded to ``T``, so completion token ``t`` of every
row sits at position ``P + t`` and is predicted by the logits at ``P + t - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
        input_ids[i, P - len(p):P] = torch.as_tensor(list(p), dtype=torch.long)
        attention[i, P - len(p):P] = 1
        if len(c):
            input_ids[i, P:P + len(c)] = torch.as_tensor(list(c), dtype=torch.long)
            attention[i, P:P + len(c)] = 1
            comp_mask[i, :len(c)] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp_min(0)
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids,
            "completion_ids": input_ids[:, P:], "completion_mask": comp_mask, "prompt_len": P}


def completion_logits(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """Logits ``[B, T, V]`` that predict each completion token, divided by the sampling temperature."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False)
    P = batch["prompt_len"]
    T = batch["completion_ids"].shape[1]
    logits = out.logits[:, P - 1:P + T - 1]
    return logits / temperature if temperature != 1.0 else logits


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[tokens]`` as ``logit - logsumexp`` (no ``[B, T, V]`` log-softmax tensor is kept)."""
    logits32 = logits.float()
    return logits32.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits32, dim=-1)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of ``softmax(logits)`` (float32)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    return -(lp.exp() * lp).sum(-1)
