"""``exact_answer``: string equality of the extracted final answer with the reference."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .base import SampleReward
from .extract import DEFAULT_EOS_MARKERS, AnswerExtractor
from .registry import register_reward

_WS = re.compile(r"\s+")


def normalize_answer(text: str, ignore_case: bool = False) -> str:
    """Strip, collapse every whitespace run to one space, and ``casefold()`` when ``ignore_case``."""
    text = _WS.sub(" ", text.strip())
    return text.casefold() if ignore_case else text


@register_reward("exact_answer")
class ExactAnswer(SampleReward):
    """1.0 if the completion's final answer equals the reference answer as a string, else 0.0.

    The answer is extracted from the completion by :class:`reward_models.extract.AnswerExtractor` with
    ``mode=extract`` (default ``"auto"``: last ``<answer>...</answer>`` content, else last ``\\boxed{}`` content,
    else last number-ish token, else last non-empty line; trailing EOS markers are stripped first),
    ``pattern=answer_pattern``, ``multiple_tags`` and ``eos_markers``. Both strings are then normalized by
    :func:`normalize_answer` (strip, collapse whitespace, case-fold if ``ignore_case``) and compared with ``==``.
    The reference is normalized but not extracted. No extractable answer, or a ``None`` reference, scores 0.0.
    No numeric equivalence (``"0.5"`` != ``"1/2"``); use ``numeric_match`` for that.
    """

    def __init__(
        self,
        extract: str = "auto",
        answer_pattern: str | None = None,
        multiple_tags: str = "last",
        ignore_case: bool = False,
        eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS,
    ):
        self.extractor = AnswerExtractor(extract, answer_pattern, multiple_tags, tuple(eos_markers))
        self.ignore_case = bool(ignore_case)

    def score(self, prompt: str, completion: str, answer: str | None) -> float:
        if answer is None:
            return 0.0
        predicted = self.extractor(completion)
        if predicted is None:
            return 0.0
        same = normalize_answer(predicted, self.ignore_case) == normalize_answer(str(answer), self.ignore_case)
        return 1.0 if same else 0.0
