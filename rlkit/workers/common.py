"""Shared set-up for the roles' processes (Ray actors, or the driver in-process): thread count, allocator, quiet
logs, model loading."""

from __future__ import annotations

import logging
import os


def setup_process(torch_threads: int, seed: int | None = None) -> None:
    """A role's process: its torch threads, glibc's allocator kept from returning each step's memory to the kernel
    (:func:`rlkit.utils.allocator.tune_allocator`), quiet libraries, the recipe's plugins, its seed."""
    import torch

    from rlkit.utils.allocator import tune_allocator

    torch.set_num_threads(max(1, torch_threads))
    tune_allocator()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    from rlkit.plugins import load_from_env

    load_from_env()  # the recipe's plugins register their components here too
    if seed is not None:
        torch.manual_seed(seed)


def quiet_libraries() -> None:
    """Silence per-file progress bars of transformers/datasets (rlkit prints its own progress)."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def load_model(path: str, dtype: str = "float32", attn_implementation: str | None = None):
    from rlkit.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(path, dtype=dtype, attn_implementation=attn_implementation)


def cpu_state_dict(model) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def restarted_by_ray() -> bool:
    """Whether this process is a Ray actor that Ray restarted after its previous process died (never in-process:
    Ray is then not even imported). Ray 2.60's own property reads its deprecated ``actor_id`` internally and prints
    a RayDeprecationWarning; that warning is Ray's, not the user's, so it is muted."""
    import sys
    import warnings

    ray = sys.modules.get("ray")  # imported by Ray itself in an actor process
    if ray is None or not ray.is_initialized():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ray.get_runtime_context()
        return ctx.get_actor_id() is not None and bool(ctx.was_current_actor_reconstructed)
