"""Models: the built-in tiny causal LM and the generic ``from_pretrained`` loading path."""

from .loading import TINY_NAMES, load_model_and_tokenizer
from .tiny import build_tiny_model, build_tiny_tokenizer, save_tiny

__all__ = ["TINY_NAMES", "build_tiny_model", "build_tiny_tokenizer", "load_model_and_tokenizer", "save_tiny"]
