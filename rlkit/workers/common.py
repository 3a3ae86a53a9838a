"""Shared set-up for Ray actors: thread count, quiet logs, model loading."""

from __future__ import annotations

import logging
import os


def setup_process(torch_threads: int, seed: int | None = None) -> None:
    import torch

    torch.set_num_threads(max(1, torch_threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if seed is not None:
        torch.manual_seed(seed)


def load_model(path: str, dtype: str = "float32"):
    from rlkit.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(path, dtype=dtype)


def cpu_state_dict(model) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
