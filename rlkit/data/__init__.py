"""Task data: the built-in arithmetic task and the generic ``datasets`` loading path."""

from .arithmetic import format_completion, make_arithmetic_splits, make_sft_dataset, problem_pool
from .loading import load_prompt_dataset

__all__ = ["format_completion", "load_prompt_dataset", "make_arithmetic_splits", "make_sft_dataset", "problem_pool"]
