"""Output utilities of a training run: crash-safe checkpoints, metrics logging, pass@k evaluation, plots.

Importing ``rlkit.utils`` is cheap: the names below are loaded from their submodule on first access, and the
submodules import torch, transformers, TensorBoard, wandb, MLflow, matplotlib or rich only inside the functions that
use them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "checkpoint": [
        "atomic_write_bytes",
        "atomic_write_json",
        "list_complete_checkpoints",
        "load_state_dict",
        "save_hf_checkpoint",
        "save_state_dict",
    ],
    "metrics": ["MetricsLogger", "metrics_logger", "read_metrics"],
    "loggers": ["Backend", "available_backends", "register_backend"],
    "evaluation": ["pass_at_k", "print_summary_table", "summarize_correctness"],
    "plotting": ["plot_pass_at_k", "plot_training_curves"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rlkit.utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"rlkit.utils.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
