"""Mixed precision for every forward pass: ``model.dtype: bf16-mixed``.

The weights, their gradients and the optimizer state stay float32; each forward pass of the model (rollout decoding,
reference scoring, the learner's forward and so its backward) runs under ``torch.autocast(dtype=bfloat16)``, so the
matrix multiplications run in bfloat16 (on CPUs with AMX or AVX512-BF16, and on GPUs, several times faster than
float32) while normalisations, softmaxes and reductions stay float32 as autocast decides. The returned logits are
cast to float32, so log-probabilities, ratios and divergences are computed in float32 from bfloat16-rounded logits.
This is what TRL/accelerate's ``bf16=True`` and verl's ``mixed_precision: bf16`` do.

The switch lives on the model object (:func:`enable_autocast` rebinds its ``forward`` and its decoder trunk's), so
every code path that calls the model (the native sampler, ``generate``, shared-prompt forwards, PPO's critic, LoRA
through peft) gets it without any plumbing; ``copy.deepcopy`` rebinds it to the copy. Computations outside the model's
forward (the fused head's ``hidden @ lm_head.T``, exact divergences) stay float32.

Numerics: the rollout's KV-cache decode and the learner's full forward round differently in bfloat16, so the
behaviour log-probs recorded at sampling and the learner's log-probs differ more than in float32 (the metric
``rollout/logprob_gap`` shows it); ``grpo.tis_cap`` corrects for it as for any engine mismatch.
"""

from __future__ import annotations

import types

#: ``model.dtype`` names: the weights' dtype and the dtype of the forward's matmuls (``None``: no autocast)
PRECISIONS = {
    "float32": ("float32", None),
    "bfloat16": ("bfloat16", None),
    "float16": ("float16", None),
    "bf16-mixed": ("float32", "bfloat16"),
}


def weights_dtype(precision: str) -> str:
    """The dtype the weights are stored in for a ``model.dtype`` value."""
    return PRECISIONS[precision][0]


def engine_dtype(precision: str) -> str:
    """The dtype an engine that loads its own weights (vLLM) should run in: the compute dtype."""
    weights, compute = PRECISIONS[precision]
    return compute or weights


def _autocast_forward(self, *args, **kwargs):
    import torch

    device = next(self.parameters()).device.type
    with torch.autocast(device_type=device, dtype=self.rlkit_autocast_dtype):
        out = type(self).forward(self, *args, **kwargs)
    logits = getattr(out, "logits", None)
    if logits is not None and logits.dtype != torch.float32:
        out.logits = logits.float()
    return out


def enable_autocast(model, dtype: str = "bfloat16"):
    """Run every forward of ``model`` under ``torch.autocast(dtype)``, logits returned as float32; returns
    ``model``. The weights are not converted."""
    import torch

    get_decoder = getattr(model, "get_decoder", None)
    trunk = get_decoder() if callable(get_decoder) else None
    # the decoder trunk too: the fused head and PPO's critic call it directly for the last hidden states
    for module in (model, trunk) if isinstance(trunk, torch.nn.Module) and trunk is not model else (model,):
        module.rlkit_autocast_dtype = getattr(torch, dtype)
        module.forward = types.MethodType(_autocast_forward, module)
    return model


def compute_dtype(model):
    """The dtype ``model``'s matmuls run in: the autocast dtype of :func:`enable_autocast` (on the model or a peft
    wrapper's base), else its parameters' dtype."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    dtype = getattr(base, "rlkit_autocast_dtype", None) or getattr(model, "rlkit_autocast_dtype", None)
    return dtype if dtype is not None else next(model.parameters()).dtype


def autocast_region(model):
    """``torch.autocast`` with the dtype :func:`enable_autocast` set on ``model`` (or on a peft wrapper's base),
    else a null context. Entering it around many forwards (a decoding loop) lets autocast cast each weight once."""
    import contextlib

    import torch

    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    dtype = getattr(base, "rlkit_autocast_dtype", None)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=next(base.parameters()).device.type, dtype=dtype)
