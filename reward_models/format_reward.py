"""``format``: does the completion follow the expected output format?"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .base import SampleReward
from .extract import DEFAULT_EOS_MARKERS, strip_eos
from .registry import register_reward


@register_reward("format")
class FormatReward(SampleReward):
    """1.0 if the completion has the expected format, else 0.0. The reference answer is ignored.

    The completion is first passed through :func:`reward_models.extract.strip_eos` (trailing whitespace and
    ``eos_markers`` such as ``<|endoftext|>``/``</s>`` removed). Then:

    * default (``pattern=None``): the text contains exactly one ``<answer>`` and exactly one ``</answer>``, the
      opening tag comes first, the content between them is not blank, and nothing but whitespace follows
      ``</answer>``. Any text may precede the tag (e.g. reasoning). So ``"<answer>42</answer><|endoftext|>"`` and
      ``"<think>6*7</think>\\n<answer>42</answer>"`` score 1.0, while ``""``, ``"42"``, ``"<answer></answer>"``,
      ``"<answer>1</answer><answer>2</answer>"`` and ``"<answer>42</answer> because..."`` score 0.0.
    * ``pattern="..."``: 1.0 iff ``re.fullmatch(pattern, text, re.DOTALL)`` matches the whole stripped text.
    """

    def __init__(self, pattern: str | None = None, eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS):
        self.pattern = pattern
        self.eos_markers = tuple(eos_markers)
        try:
            self._regex = re.compile(pattern, re.DOTALL) if pattern is not None else None
        except re.error as err:
            raise ValueError(f"invalid format pattern {pattern!r}: {err}") from None

    def score(self, prompt: str, completion: str, answer: str | None) -> float:
        text = strip_eos(completion, self.eos_markers)
        if self._regex is not None:
            return 1.0 if self._regex.fullmatch(text) else 0.0
        if text.count("<answer>") != 1 or text.count("</answer>") != 1:
            return 0.0
        start, end = text.index("<answer>"), text.index("</answer>")
        if end < start or not text[start + len("<answer>") : end].strip():
            return 0.0
        return 1.0 if text.endswith("</answer>") else 0.0
