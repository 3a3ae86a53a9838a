"""``length_penalty``: a linear penalty for completions over a length budget."""

from __future__ import annotations

from collections.abc import Sequence

from .base import SampleReward
from .extract import DEFAULT_EOS_MARKERS, strip_eos
from .registry import register_reward

UNITS = ("chars", "words")


@register_reward("length_penalty")
class LengthPenalty(SampleReward):
    """``-min(1, max(0, length - max_length) / scale)``: 0.0 within budget, falling linearly to -1.0.

    ``length`` is measured on the completion after :func:`reward_models.extract.strip_eos` (so a trailing
    ``<|endoftext|>`` is free), in ``unit="chars"`` (``len(text)``, default) or ``unit="words"``
    (``len(text.split())``, whitespace-separated words). ``scale`` is how many units over ``max_length`` it takes
    to reach the floor of -1.0; it defaults to ``max_length`` (so -1.0 at twice the budget). With
    ``max_length=10, scale=20``: 10 chars -> 0.0, 15 -> -0.25, 30 -> -1.0, 100 -> -1.0. Prompt and answer are ignored.
    """

    def __init__(
        self,
        max_length: int = 512,
        unit: str = "chars",
        scale: float | None = None,
        eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS,
    ):
        if unit not in UNITS:
            raise ValueError(f"unit {unit!r} is not one of {', '.join(UNITS)}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0:
            raise ValueError(f"max_length must be an int >= 0, got {max_length!r}")
        if scale is None:
            scale = max_length
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r} (set scale explicitly when max_length is 0)")
        self.max_length, self.unit, self.scale = max_length, unit, float(scale)
        self.eos_markers = tuple(eos_markers)

    def length(self, completion: str) -> int:
        text = strip_eos(completion, self.eos_markers)
        return len(text) if self.unit == "chars" else len(text.split())

    def score(self, prompt: str, completion: str, answer: str | None) -> float:
        excess = max(0, self.length(completion) - self.max_length)
        return -min(1.0, excess / self.scale) if excess else 0.0
