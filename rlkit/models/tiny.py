"""A tiny causal LM and its tokenizer, built locally (no download) for the default job and the tests.

Tokenizer (``tokenizers`` ``WordLevel`` wrapped in ``transformers.PreTrainedTokenizerFast``): one token per
character, except ``<answer>`` and ``</answer>``, which are single ordinary (non-special) tokens so that
``decode(..., skip_special_tokens=True)`` keeps them for the reward. Characters: digits, ``+-*/=()., ?:``
and lowercase letters; anything else maps to ``<unk>``. Special tokens ``<pad>`` (id 0), ``<eos>`` (1),
``<bos>`` (2), ``<unk>`` (3). Nothing is added on encode: no BOS is prepended and no EOS appended (the
Qwen/GPT-2 convention), so ``tok("12+7=")`` is exactly 5 ids. Special tokens written as text (TRL appends
``"<eos>"`` to SFT completions) encode to their single id.

Padding: the tokenizer pads on the right (training); for batched ``generate`` pass left-padded inputs, e.g.
set ``tokenizer.padding_side = "left"`` (:func:`rlkit.models.loading.load_model_and_tokenizer` does).

Model: a Llama decoder (``LlamaConfig``; Qwen2 is avoided because ``AutoTokenizer`` forces its BPE tokenizer class
on any ``qwen2`` checkpoint, which would break this tokenizer on reload), 4 layers, hidden 128, 4 attention heads
(head_dim 32: vLLM's CPU attention needs head_dim >= 32), SwiGLU width 384, tied embeddings: about 0.86M parameters.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
TAGS = ["<answer>", "</answer>"]
CHARS = list(string.digits) + list("+-*/=()., ?:") + list(string.ascii_lowercase)
VOCAB = SPECIALS + TAGS + CHARS
PAD_ID, EOS_ID, BOS_ID, UNK_ID = range(4)

#: The model's defaults; any of them can be overridden through ``build_tiny_model(**overrides)``.
TINY_CONFIG = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    initializer_range=0.02,
    use_cache=True,
)


def build_tiny_tokenizer(padding_side: str = "right", model_max_length: int = 256):
    """The tiny model's tokenizer (a ``PreTrainedTokenizerFast``); deterministic, no files needed."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    # the two tags are matched first, every other character is its own piece
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"</?answer>|."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side=padding_side,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(seed: int = 0, **overrides):
    """A freshly initialised tiny Llama causal LM (float32). Same ``seed`` -> same weights;
    the global torch RNG is left untouched. ``overrides`` replace entries of :data:`TINY_CONFIG` (or any other
    ``LlamaConfig`` field, e.g. ``num_hidden_layers=2``, ``vocab_size=...``)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg: dict[str, Any] = dict(
        TINY_CONFIG, vocab_size=len(VOCAB), pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID
    )
    cfg.update(overrides)
    config = LlamaConfig(**cfg)
    head_dim = config.hidden_size // config.num_attention_heads
    if head_dim < 32:
        raise ValueError(
            f"tiny model: head_dim {head_dim} < 32 (hidden_size {config.hidden_size} / "
            f"{config.num_attention_heads} heads); vLLM's CPU attention needs >= 32"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = config.pad_token_id, config.eos_token_id, BOS_ID
    return model


def save_tiny(path: str | Path, seed: int = 0, **overrides) -> Path:
    """Write the tiny model (safetensors) and tokenizer with ``save_pretrained`` into ``path`` so that
    ``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)`` load them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_tiny_model(seed, **overrides).save_pretrained(path, safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(path)
    return path
