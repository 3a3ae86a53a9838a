"""``numeric_match``: numeric equivalence of the extracted final answer with the reference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from .base import SampleReward
from .extract import DEFAULT_EOS_MARKERS, AnswerExtractor, to_number
from .registry import register_reward


def numbers_close(a: Fraction, b: Fraction, rel_tol: float, abs_tol: float) -> bool:
    """Exact equality, or ``|a - b| <= max(rel_tol * max(|a|, |b|), abs_tol)`` (``math.isclose``)."""
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)
    except OverflowError:
        return False


@register_reward("numeric_match")
class NumericMatch(SampleReward):
    """1.0 if the completion's final answer is numerically equal to the reference, else 0.0.

    The answer string is extracted as in ``exact_answer`` (``extract``, ``answer_pattern``, ``multiple_tags``,
    ``eos_markers``; default: last ``<answer>`` tag, else last ``\\boxed{}``, else last number token, else last line).
    Both it and the reference are then read by :func:`reward_models.extract.to_number`: the whole string as a number
    (ints, decimals, ``1e3``, signs incl. U+2212, thousands separators ``1,000``, ``a/b``, ``\\frac{a}{b}``,
    ``\\boxed{...}``, ``$...$``, one trailing period), else its last ``\\boxed{}``, else its last number token; so
    ``"x = 3/4"`` reads 3/4 and a GSM8K-style reference ``"... #### 1,000"`` reads 1000. Values are exact fractions;
    equal values match, otherwise ``math.isclose(pred, ref, rel_tol=rel_tol, abs_tol=abs_tol)`` decides (defaults
    ``rel_tol=1e-6``, ``abs_tol=0``: ``0.33333`` != ``1/3`` but ``0.3333333`` == ``1/3``). An unparseable answer or
    reference, or a ``None`` reference, scores 0.0.
    """

    def __init__(
        self,
        rel_tol: float = 1e-6,
        abs_tol: float = 0.0,
        extract: str = "auto",
        answer_pattern: str | None = None,
        multiple_tags: str = "last",
        eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS,
    ):
        if not (rel_tol >= 0 and abs_tol >= 0):
            raise ValueError(f"rel_tol and abs_tol must be >= 0, got rel_tol={rel_tol!r}, abs_tol={abs_tol!r}")
        self.rel_tol, self.abs_tol = float(rel_tol), float(abs_tol)
        self.extractor = AnswerExtractor(extract, answer_pattern, multiple_tags, tuple(eos_markers))

    def score(self, prompt: str, completion: str, answer: str | None) -> float:
        if answer is None:
            return 0.0
        reference = to_number(str(answer))
        predicted = to_number(self.extractor(completion))
        if reference is None or predicted is None:
            return 0.0
        return 1.0 if numbers_close(predicted, reference, self.rel_tol, self.abs_tol) else 0.0
