"""Answer extraction and number parsing shared by the rule-based rewards. Pure Python, no dependencies.

Extraction modes (:class:`AnswerExtractor`, ``mode=``), applied to the completion after :func:`strip_eos`:

* ``"auto"`` (default): the content of the last ``<answer>...</answer>`` tag if the completion has a closed tag
  (even if that content is empty); else the content of the last ``\\boxed{...}``; else the last number-ish token
  (see :data:`NUMBER_TOKEN`); else the last non-empty line; else ``None`` (empty completion).
* ``"tag"``: only the ``<answer>`` tag content; ``None`` without a closed tag.
* ``"boxed"``: only the last ``\\boxed{...}`` content.
* ``"last_number"``: only the last number-ish token.
* ``"last_line"``: the last non-empty line, stripped.
* ``"full"``: the whole (EOS-stripped) completion.

Tags are case-sensitive. With several tags, ``multiple_tags`` picks the ``"last"`` (default) or ``"first"``, or
``"reject"`` extracts ``None`` (which every answer-checking reward scores 0.0). A custom ``pattern`` regex replaces the
mode: its last match is used (group 1 if the regex has a group, else the whole match).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

#: Text end-of-sequence / padding markers stripped from the end of a completion before scoring.
DEFAULT_EOS_MARKERS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "</s>",
    "<eos>",
    "<pad>",
)

#: ``<answer>X</answer>`` where X contains no further opening tag (so ``<answer><answer>5</answer>`` yields ``5``).
ANSWER_TAG = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)

_SIGN = r"(?:(?<![\w.)\]}])[-\u2212+])?"  # a sign not glued to a preceding word/number ("3-4" is 3 and 4)
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)(?:\.\d+)?|\.\d+"
#: Number-ish tokens: LaTeX ``\\frac{a}{b}`` (also ``\\dfrac``/``\\tfrac``), ``a/b``, ``-1,234.5``, ``.5``.
NUMBER_TOKEN = re.compile(
    rf"{_SIGN}\\[dt]?frac\{{[^{{}}]*\}}\{{[^{{}}]*\}}|{_SIGN}(?:{_UNSIGNED})(?:\s*/\s*(?:{_UNSIGNED}))?"
)

_PLAIN = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_LATEX_FRAC = re.compile(r"([+-]?)\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_LATEX_FRAC_SHORT = re.compile(r"([+-]?)\\[dt]?frac(\d)(\d)")
_SLASH = re.compile(r"([^/]+)/([^/]+)")
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")

EXTRACT_MODES = ("auto", "tag", "boxed", "last_number", "last_line", "full")
MULTIPLE_TAGS = ("last", "first", "reject")


def strip_eos(text: str, markers: Sequence[str] = DEFAULT_EOS_MARKERS) -> str:
    """Remove trailing whitespace and any run of trailing ``markers`` (``"42</s><pad><pad>"`` -> ``"42"``)."""
    text = text.rstrip()
    changed = True
    while changed and text:
        changed = False
        for marker in markers:
            if marker and text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


def answer_tags(text: str) -> list[str]:
    """Contents of all closed ``<answer>...</answer>`` tags, in order (not stripped)."""
    return ANSWER_TAG.findall(text)


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the group whose content starts at ``start`` (just after its ``{``)."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last brace-balanced ``\\boxed{...}`` (or ``\\fbox{...}``), or ``None``."""
    for match in reversed(list(_BOX_OPEN.finditer(text))):
        end = _closing_brace(text, match.end())
        if end is not None:
            return text[match.end() : end]
    return None


def last_number_token(text: str) -> str | None:
    """The last :data:`NUMBER_TOKEN` match in ``text``, or ``None``."""
    matches = NUMBER_TOKEN.findall(text)
    return matches[-1] if matches else None


def last_line(text: str) -> str | None:
    """The last non-empty line, stripped, or ``None``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def parse_number(text: str | None) -> Fraction | None:
    """Parse a whole string as an exact number; ``None`` if it is not one.

    Accepts ints, decimals, scientific notation, a leading ``+``/``-`` (also U+2212), thousands separators
    (``1,000`` and LaTeX ``1{,}000``), ``a/b``, ``\\frac{a}{b}``/``\\dfrac``/``\\tfrac``/``\\frac34``, a wrapping
    ``\\boxed{...}``, ``$...$``/``\\(...\\)`` delimiters and one trailing period. Division by zero gives ``None``.
    """
    if text is None:
        return None
    s = text.strip().replace("\u2212", "-").replace("{,}", ",").replace("\\!", "").replace("\\,", "")
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)].strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    if not s:
        return None
    box = _BOX_OPEN.match(s)
    if box:  # only a box spanning the whole string; "\\boxed{1} + 2" is not a number
        end = _closing_brace(s, box.end())
        return parse_number(s[box.end() : end]) if end == len(s) - 1 else None
    for pattern in (_LATEX_FRAC, _LATEX_FRAC_SHORT):
        m = pattern.fullmatch(s)
        if m:
            num, den = parse_number(m.group(2)), parse_number(m.group(3))
            if num is None or den is None or den == 0:
                return None
            value = num / den
            return -value if m.group(1) == "-" else value
    m = _SLASH.fullmatch(s)
    if m:
        num, den = _parse_plain(m.group(1)), _parse_plain(m.group(2))
        if num is None or den is None or den == 0:
            return None
        return num / den
    return _parse_plain(s)


def _parse_plain(s: str) -> Fraction | None:
    s = s.strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if not _PLAIN.fullmatch(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def to_number(text: str | None) -> Fraction | None:
    """:func:`parse_number` of the whole string; else of its last ``\\boxed{}``; else of its last number token.

    So ``"42"``, ``"x = 42"``, ``"#### 42"`` and ``"\\boxed{42} apples"`` all give 42.
    """
    if text is None:
        return None
    value = parse_number(text)
    if value is not None:
        return value
    boxed = last_boxed(text)
    if boxed is not None:
        return parse_number(boxed)
    return parse_number(last_number_token(text))


@dataclass(frozen=True)
class AnswerExtractor:
    """Pulls the final answer out of a completion; see the module docstring for the exact rules."""

    mode: str = "auto"
    pattern: str | None = None
    multiple_tags: str = "last"
    eos_markers: tuple[str, ...] = DEFAULT_EOS_MARKERS

    def __post_init__(self) -> None:
        if self.mode not in EXTRACT_MODES:
            raise ValueError(f"extract mode {self.mode!r} is not one of {', '.join(EXTRACT_MODES)}")
        if self.multiple_tags not in MULTIPLE_TAGS:
            raise ValueError(f"multiple_tags {self.multiple_tags!r} is not one of {', '.join(MULTIPLE_TAGS)}")
        if self.pattern is not None:
            try:
                object.__setattr__(self, "_regex", re.compile(self.pattern, re.DOTALL))
            except re.error as err:
                raise ValueError(f"invalid answer pattern {self.pattern!r}: {err}") from None
        object.__setattr__(self, "eos_markers", tuple(self.eos_markers))

    def __call__(self, completion: str) -> str | None:
        text = strip_eos(completion, self.eos_markers)
        if self.pattern is not None:
            matches = list(self._regex.finditer(text))  # type: ignore[attr-defined]
            if not matches:
                return None
            last = matches[-1]
            return last.group(1) if last.re.groups else last.group(0)
        if self.mode == "full":
            return text
        if self.mode == "last_line":
            return last_line(text)
        if self.mode == "last_number":
            return last_number_token(text)
        if self.mode == "boxed":
            return last_boxed(text)
        tags = answer_tags(text)
        if tags:
            if len(tags) > 1 and self.multiple_tags == "reject":
                return None
            return tags[0] if self.multiple_tags == "first" else tags[-1]
        if self.mode == "tag":
            return None
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed
        return last_number_token(text) or last_line(text)
