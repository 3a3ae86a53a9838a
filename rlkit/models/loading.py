"""Load a causal LM and its tokenizer: the built-in ``tiny`` model, a local directory, or a hub id (same code)."""

from __future__ import annotations

import os
from pathlib import Path

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
TINY_NAMES = ("tiny", "rlkit/tiny")


def load_model_and_tokenizer(name_or_path: str, dtype: str = "float32", seed: int = 0):
    """``(model, tokenizer)``. ``tiny`` builds the local tiny model (seeded); anything else goes through
    ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``. Tokenizers without a pad
    token get ``pad_token = eos_token``; padding is on the left (generation)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if str(name_or_path) in TINY_NAMES:
        from .tiny import build_tiny_model, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(seed, vocab_size=len(tokenizer)).to(getattr(torch, dtype))
        return model, tokenizer
    local = Path(name_or_path)
    if not local.exists() and (os.environ.get("HF_HUB_OFFLINE") == "1" or str(name_or_path).startswith((".", "/"))):
        raise FileNotFoundError(f"model {name_or_path!r}: no such directory (and hub downloads are off)")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
