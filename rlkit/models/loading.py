"""Load a causal LM and its tokenizer: the built-in tiny model, a local directory, or a hub id (the same code).

Pad token: a tokenizer without one gets ``pad_token = eos_token`` (the usual fallback for decoder-only models;
padded positions are masked by the attention mask, so the choice only matters for the id written there), and
the model's ``config``/``generation_config`` ``pad_token_id`` is set to match when missing.

Padding side: the returned tokenizer pads on the ``padding_side`` argument (default ``"left"``, what batched
``generate`` needs); training code that pads itself (TRL's collators, :func:`rlkit.models.forward.collate`) is not
affected. Pass ``padding_side=None`` to keep the tokenizer's own setting.
"""

from __future__ import annotations

import os
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16", "bf16-mixed")
#: Names that build the local tiny model instead of calling ``from_pretrained``.
TINY_NAMES = ("tiny", "rlkit/tiny")


def _offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_local(name: str) -> bool:
    """A path a user meant as local: absolute, relative with ``./``/``../``/``~``, or more than ``org/name``."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or os.path.isabs(name)


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike,
    dtype: str = "float32",
    seed: int = 0,
    *,
    padding_side: str | None = "left",
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    **model_kwargs,
):
    """``(model, tokenizer)`` for ``name_or_path``.

    * ``"tiny"`` / ``"rlkit/tiny"``: the local tiny model (:mod:`rlkit.models.tiny`), initialised from ``seed``
      (``model_kwargs`` override its config, e.g. ``num_hidden_layers=2``);
    * anything else: ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` with
      ``revision``, ``trust_remote_code`` and ``model_kwargs``; a local directory and a hub id take the same path.

    ``dtype``: ``float32`` | ``bfloat16`` | ``float16`` | ``bf16-mixed`` (float32 weights, every forward under
    bfloat16 autocast: :mod:`rlkit.models.precision`). ``attn_implementation``: the recipe's
    ``model.attn_implementation`` (:func:`set_attention`; ``None``: as transformers loads it).

    Raises ``FileNotFoundError`` naming the path when it is not a local directory and either it is written as a
    local path (``./x``, ``/x``, ``a/b/c``) or the hub is offline (``HF_HUB_OFFLINE=1``) and the name is not in the
    local cache.
    """
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"model dtype must be one of {list(DTYPES)}, got {dtype!r}")
    from .precision import PRECISIONS, enable_autocast

    weights, compute = PRECISIONS[dtype]
    torch_dtype = getattr(torch, weights)
    name = str(name_or_path)
    if name in TINY_NAMES:
        from .tiny import build_tiny_model, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(seed, **model_kwargs).to(torch_dtype)
    else:
        model, tokenizer = _from_pretrained(name, torch_dtype, revision, trust_remote_code, model_kwargs)
    _ensure_pad_token(model, tokenizer)
    set_attention(model, attn_implementation)
    if compute is not None:
        enable_autocast(model, compute)
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return model, tokenizer


def set_attention(model, name: str | None):
    """``model.attn_implementation``: switch a loaded model (a peft wrapper too) to attention kernel ``name`` with
    transformers' ``set_attn_implementation``; ``None`` leaves the model as loaded. Returns the model. Raises
    :class:`~rlkit._config.ConfigError` at ``model.attn_implementation`` when the kernel is not available for this
    model or machine (e.g. ``flash_attention_2`` without the flash-attn package)."""
    if name is None:
        return model
    from rlkit._config import ConfigError

    try:
        model.set_attn_implementation(name)
    except (ValueError, ImportError, AttributeError) as err:
        raise ConfigError("model.attn_implementation", f"{name!r} cannot be used here: {err}") from None
    return model


def _from_pretrained(name, torch_dtype, revision, trust_remote_code, model_kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(f"model {name!r}: expected a model directory (config.json, weights), got a file")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {name!r} has no config.json (not a save_pretrained directory)")
        name = str(path)
    elif _looks_local(name):
        raise FileNotFoundError(f"model path {name!r} does not exist")
    common = dict(revision=revision, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **common)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, **common, **model_kwargs)
    except OSError as err:
        if not path.is_dir() and _offline():
            raise FileNotFoundError(
                f"model {name!r}: no such local directory, and HF_HUB_OFFLINE is set so it cannot be fetched from "
                f"the hub (and it is not in the local cache)"
            ) from err
        raise
    return model, tokenizer


def _ensure_pad_token(model, tokenizer) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad token nor an eos token; set one before training")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def load_tokenizer(name_or_path: str | os.PathLike, padding_side: str | None = "left"):
    """The tokenizer alone (for engines that load their own weights, e.g. vLLM), with the same pad-token fallback
    as :func:`load_model_and_tokenizer`."""
    name = str(name_or_path)
    if name in TINY_NAMES:
        from .tiny import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
    else:
        from transformers import AutoTokenizer

        path = Path(name).expanduser()
        if not path.is_dir() and _looks_local(name):
            raise FileNotFoundError(f"model path {name!r} does not exist")
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad token nor an eos token; set one before training")
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer
