"""Task data: the built-in arithmetic task, the generic ``datasets`` loading path, and DPO preference pairs."""

from .arithmetic import format_completion, make_arithmetic_splits, make_sft_dataset, problem_pool
from .loading import load_prompt_dataset
from .preference import load_preference_dataset, make_synthetic_pairs

__all__ = [
    "format_completion",
    "load_preference_dataset",
    "load_prompt_dataset",
    "make_arithmetic_splits",
    "make_sft_dataset",
    "make_synthetic_pairs",
    "problem_pool",
]
