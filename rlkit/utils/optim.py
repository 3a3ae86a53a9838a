"""AdamW for rlkit's learners (GRPO/PPO learner, DPO): torch's fused kernel wherever every parameter allows it.

``torch.optim.AdamW(fused=True)`` updates each dtype/device group of parameters in one kernel, where the default
(``foreach``) path runs about a dozen multi-tensor ops over them; the update is AdamW's either way (decoupled weight
decay ``p <- p (1 - lr wd)``, then ``p <- p - lr m_hat / (sqrt(v_hat) + eps)``), equal up to float rounding
(``tests/test_optim.py`` checks both against a hand-written AdamW). On 2 CPU cores, 35M float32 parameters: 22 ms
a step fused vs 109 ms (``docs/benchmarks.md``). TRL's default ``optim`` is ``adamw_torch_fused`` too.

The fused kernel needs floating-point parameters on a device torch has the kernel for (CPU, CUDA, ...); anything
else (e.g. a ``meta`` parameter) gets the default implementation, never an error. ``fused`` and ``foreach`` are
how an update is computed, not what it is, so :func:`load_state` keeps the live optimizer's choice when it loads a
state dict saved by another implementation (``load_state_dict`` would otherwise copy the saved group's flag).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

#: param-group keys that choose the implementation, not the update
IMPLEMENTATION_KEYS = ("fused", "foreach")


def fused_supported(params: Iterable[torch.Tensor]) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` can step every one of ``params`` (floating point, on a device with
    the fused kernel). torch checks this only at the first ``step()``; this checks it before construction."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    return all(torch.is_floating_point(p) and p.device.type in devices for p in params)


def adamw(params: Iterable[torch.Tensor], *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``params`` (those that require gradients are the caller's choice), fused where
    :func:`fused_supported`, else torch's default implementation."""
    params = list(params)
    if not params:
        raise ValueError("AdamW: no parameters to optimize (none requires a gradient)")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused_supported(params) or None)


def load_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)``, keeping ``opt``'s own implementation flags (:data:`IMPLEMENTATION_KEYS`) in
    every param group: a checkpoint written by the foreach path resumes on the fused one and vice versa."""
    kept = [{k: g.get(k) for k in IMPLEMENTATION_KEYS if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, flags in zip(opt.param_groups, kept, strict=True):
        group.update(flags)
