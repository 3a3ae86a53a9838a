"""Weight averaging of checkpoints ("model soups") for SALSA's soup reference (arXiv 2411.01798)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def soup_state_dict(state_dicts: Sequence[Mapping[str, torch.Tensor]],
                    weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Weighted parameter average ``theta_ref = sum_i w_i theta_i`` (SALSA: two SFT models, ``w = 1/2`` each).

    ``weights`` default to uniform; they must be non-negative and are normalized to sum to 1, so the result is
    an average. Floating-point tensors are averaged in float32 (returned as float32); non-floating tensors (e.g.
    integer buffers) must be equal across checkpoints and are copied. Works the same for LoRA adapter state dicts
    (averaging the ``lora_A``/``lora_B`` factors; note that this is *not* the average of the merged deltas
    ``B A``; to average deltas, merge the adapters first).

    Raises ``ValueError`` naming the key when keys or shapes differ between checkpoints.
    """
    if len(state_dicts) == 0:
        raise ValueError("soup_state_dict needs at least one state dict")
    if weights is None:
        weights = [1.0] * len(state_dicts)
    if len(weights) != len(state_dicts):
        raise ValueError(f"got {len(weights)} weights for {len(state_dicts)} state dicts")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"soup weights must be non-negative with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    norm = [float(w) / total for w in weights]
    first = state_dicts[0]
    keys = set(first)
    for i, sd in enumerate(state_dicts[1:], start=1):
        missing, extra = sorted(keys - set(sd)), sorted(set(sd) - keys)
        if missing or extra:
            bad = (missing or extra)[0]
            where = f"missing from checkpoint {i}" if missing else f"present in checkpoint {i} but not in checkpoint 0"
            raise ValueError(f"soup: key {bad!r} is {where} (architectures differ?)")
    out: dict[str, torch.Tensor] = {}
    for key in first:
        ref = first[key]
        for i, sd in enumerate(state_dicts[1:], start=1):
            if sd[key].shape != ref.shape:
                raise ValueError(
                    f"soup: key {key!r} has shape {tuple(sd[key].shape)} in checkpoint {i} "
                    f"but {tuple(ref.shape)} in checkpoint 0 (architectures differ?)"
                )
        if not torch.is_floating_point(ref):
            for i, sd in enumerate(state_dicts[1:], start=1):
                if not torch.equal(sd[key], ref):
                    raise ValueError(f"soup: non-floating tensor {key!r} differs between checkpoints 0 and {i}")
            out[key] = ref.clone()
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float32, device=ref.device)
        for w, sd in zip(norm, state_dicts):
            acc.add_(sd[key].to(torch.float32), alpha=w)
        out[key] = acc
    return out
