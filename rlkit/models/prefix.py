"""Shared-prompt forwards: each distinct prompt of a batch runs through the model once.

A GRPO batch holds ``G`` completions of every prompt, so the usual forward over ``[B, P + T]`` computes every
prompt ``G`` times. Here the distinct prompts run once (``[U, P]``, ``U = B / G``), their KV cache is indexed out to
the ``B`` rows (``Cache.batch_select_indices``, an indexing op, so gradients from every row of a group sum into
the prompt's activations), and the completions run over that cache. The values are those of the full forward (the
same positions, masks and keys; only float rounding differs), and so are the gradients: the prompt's activations
are a function of the prompt alone. Saved: ``(B - U) * P`` token positions of the forward and backward, a
fraction ``(1 - 1/G) * P / (P + T)`` of the work (29% for the default job: 6-token prompts, 12-token completions,
groups of 8; more with long prompts).

Rows share a prompt when they are adjacent and equal (ids and mask) over the ``P`` prompt columns, the layout of
:func:`rlkit.models.forward.collate` for grouped rollouts; any batch works, and one without repeats takes the plain
path. A model whose forward takes no ``past_key_values``/``position_ids``, or whose cache cannot be indexed, takes the
plain path too: :func:`shared_prefix_agrees` checks it once against the plain forward.
"""

from __future__ import annotations

import torch

from rlkit.models.cache import cache_kwarg, returned_cache
from rlkit.models.full_forward import full_completion_logits


def prompt_groups(batch: dict) -> torch.Tensor | None:
    """``group [B]``: for each row the index of its distinct prompt (groups are runs of equal adjacent prompts);
    ``None`` when no two adjacent rows share a prompt (nothing to save)."""
    P = batch["prompt_len"]
    ids, mask = batch["input_ids"][:, :P], batch["attention_mask"][:, :P]
    if ids.shape[0] < 2 or P == 0:
        return None
    new = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    new[1:] = ((ids[1:] != ids[:-1]) | (mask[1:] != mask[:-1])).any(-1)
    if bool(new.all()):
        return None
    return new.long().cumsum(0) - 1


def _first(out):
    return (
        out[0]
        if isinstance(out, (tuple, list))
        else (out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state)
    )


def shared_prefix_outputs(model, batch: dict, group: torch.Tensor, *, logits: bool = True) -> torch.Tensor:
    """The outputs at the positions that predict each completion token (``P - 1 .. P + T - 2``), ``[B, T, ...]``:
    logits (``model`` a causal LM, ``logits=True``) or final hidden states (``model`` a decoder trunk,
    ``logits=False``), with each distinct prompt computed once. ``group`` from :func:`prompt_groups`."""
    P, T = batch["prompt_len"], batch["completion_ids"].shape[1]
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    first = torch.ones_like(group, dtype=torch.bool)
    first[1:] = group[1:] != group[:-1]
    starts = first.nonzero().squeeze(-1)
    kw = {"logits_to_keep": 1} if logits else {}
    pre = model(
        input_ids=ids[starts, :P], attention_mask=mask[starts, :P], position_ids=pos[starts, :P], use_cache=True, **kw
    )
    last = _first(pre)[:, -1][group]  # [B, V] or [B, H]: predicts completion token 0
    if T == 1:
        return last[:, None]
    cache = returned_cache(pre)
    cache.batch_select_indices(group)  # differentiable indexing: every row of a group reads its prompt's K/V
    out = model(
        input_ids=ids[:, P : P + T - 1],
        attention_mask=mask[:, : P + T - 1],
        position_ids=pos[:, P : P + T - 1],
        use_cache=True,
        **{cache_kwarg(model) or "past_key_values": cache},
    )
    return torch.cat([last[:, None], _first(out)], dim=1)


@torch.no_grad()
def agreement_tolerance(model) -> float:
    """Relative tolerance of :func:`shared_prefix_agrees`: 1e-4 where the matmuls run in float32/64, 2e-2 where
    they round to 16 bits, by the weights' dtype or by autocast (``model.dtype: bf16-mixed`` keeps float32
    weights, yet its forwards round like bfloat16 ones: two forwards that split the sequence differently differ by
    about 1e-2 of the largest logit there, and that must not switch the shared-prompt forward off)."""
    from .precision import compute_dtype

    return 1e-4 if compute_dtype(model) in (torch.float32, torch.float64) else 2e-2


def shared_prefix_agrees(model, batch: dict, group: torch.Tensor, plain, rows: int = 4) -> str | None:
    """One-time guard: on the first ``rows`` rows (in eval mode), :func:`shared_prefix_outputs` equals ``plain(model,
    sub_batch)``, the plain forward. ``None`` when it does, else the reason (an exception's message included)."""
    sub = {k: (v[:rows] if torch.is_tensor(v) else v) for k, v in batch.items()}
    g = group[:rows] - group[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # a value check: no graph kept
            got = shared_prefix_outputs(model, sub, g).float()
            want = plain(model, sub).float()
    except Exception as e:  # noqa: BLE001 -- any failure means: use the plain forward (the caller prints why)
        return f"{type(e).__name__}: {e}"
    finally:
        model.train(was_training)
    if got.shape != want.shape:
        return f"output shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = float((got - want).abs().max())
    tol = agreement_tolerance(model) * max(1.0, float(want.abs().max()))
    return None if err <= tol else f"outputs differ from the plain forward by {err:.2e} (tolerance {tol:.2e})"


class SharedPrefix:
    """A worker's on/off switch for shared-prompt forwards: off when not ``enabled``; otherwise decided at the
    first batch with repeated prompts by :func:`shared_prefix_agrees` (a fallback is printed once, with why)."""

    def __init__(self, enabled: bool, owner: str):
        self.ok: bool | None = None if enabled else False
        self.owner = owner

    def group(self, model, batch: dict) -> torch.Tensor | None:
        """The ``group`` argument for :func:`shared_prefix_outputs`, or ``None`` for the plain forward."""
        if self.ok is False or (group := prompt_groups(batch)) is None:
            return None
        if self.ok is None:
            why = shared_prefix_agrees(model, batch, group, full_completion_logits)
            self.ok = why is None
            if why:
                print(f"{self.owner}: shared-prompt forward off, using the full forward: {why}", flush=True)
        return group if self.ok else None
