"""Reference refresh (TR-DPO, Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment",
arXiv 2404.09656): move the frozen reference toward the current policy during training.

Soft update every ``N`` steps with rate ``a`` in ``(0, 1]``::

    theta_ref <- (1 - a) * theta_ref + a * theta_policy

``a = 1`` is TR-DPO's hard update (the reference becomes a snapshot of the policy); ``a < 1`` an exponential moving
average of the policy's weights. Pure torch; the ReferenceWorker calls it with the learner's weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


@torch.no_grad()
def lerp_parameters_(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], rate: float) -> int:
    """In place: every floating tensor ``t`` of ``model.state_dict()`` becomes ``t + rate * (new - t)`` with
    ``new = state_dict[name]`` (computed in float32, stored in ``t``'s dtype). Tensors that share storage (tied
    input/output embeddings) are updated once. Returns how many tensors were updated.

    Raises ``ValueError`` naming the key when ``state_dict`` lacks a tensor of the model or has another shape, and
    for ``rate`` outside ``[0, 1]``. Non-floating buffers are left alone."""
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"refresh rate must be in [0, 1], got {rate}")
    own = model.state_dict()
    for key, t in own.items():
        if not torch.is_floating_point(t):
            continue
        if key not in state_dict:
            tied = any(other != key and other in state_dict and own[other].data_ptr() == t.data_ptr() for other in own)
            if tied:
                continue
            raise ValueError(f"refresh: the policy's weights have no tensor {key!r} (architectures differ?)")
        if tuple(state_dict[key].shape) != tuple(t.shape):
            raise ValueError(
                f"refresh: {key!r} has shape {tuple(state_dict[key].shape)} in the policy but "
                f"{tuple(t.shape)} in the reference (architectures differ?)"
            )
    seen, n = set(), 0
    for key, t in own.items():
        if not torch.is_floating_point(t) or key not in state_dict or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        new = state_dict[key].to(device=t.device, dtype=torch.float32)
        t.copy_(torch.lerp(t.float(), new, float(rate)).to(t.dtype))
        n += 1
    return n


def refreshed_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a refresh changes, to save in a training checkpoint: every floating tensor of ``model.state_dict()``,
    one per storage (tied embeddings once, under the first name), as contiguous CPU copies (safetensors refuses
    shared storage). :func:`lerp_parameters_` with rate 1 loads it back exactly."""
    seen: set[int] = set()
    out = {}
    for key, t in model.state_dict().items():
        if torch.is_floating_point(t) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[key] = t.detach().to("cpu").contiguous().clone()
    return out
