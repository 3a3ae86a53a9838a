"""The plain forward of a prompt+completion batch: one pass over all ``P + T`` positions, the LM head on the
completion positions only. :func:`rlkit.models.forward.completion_logits` takes it for a batch without shared
prompts, and :class:`rlkit.models.prefix.SharedPrefix` checks the shared-prompt forward against it; kept apart from
both so that neither imports the other (``forward`` -> ``prefix`` -> ``full_forward``)."""

from __future__ import annotations

import torch


def full_completion_logits(model, batch: dict) -> torch.Tensor:
    """Logits ``[B, T, V]`` that predict each completion token (no temperature), from one forward over the batch
    laid out by :func:`rlkit.models.forward.collate`.

    Only the last ``T + 1`` positions go through the LM head (``logits_to_keep``, which transformers' causal LMs
    accept): the ``[B, P, V]`` logits of the prompt are never computed. Models without it fall back to slicing."""
    P = batch["prompt_len"]
    T = batch["completion_ids"].shape[1]
    kwargs = dict(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    try:
        logits = model(**kwargs, logits_to_keep=T + 1).logits[:, :T]
    except TypeError:  # an architecture without logits_to_keep
        logits = model(**kwargs).logits[:, P - 1 : P + T - 1]
    if logits.shape[1] != T:
        raise RuntimeError(f"model returned logits for {logits.shape[1]} completion positions, expected {T}")
    return logits
