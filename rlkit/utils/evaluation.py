"""Evaluation summaries: which samples are correct, the unbiased pass@k estimator and a before/after ``rich`` table."""

from __future__ import annotations

import numbers
import re
from typing import Mapping, Sequence

__all__ = ["correctness", "pass_at_k", "print_summary_table", "sort_metric_names", "summarize_correctness"]


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from ``n`` samples of which ``c`` are correct (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code", the HumanEval paper, eq. 1):

        pass@k = 1 - C(n - c, k) / C(n, k)

    i.e. one minus the probability that ``k`` samples drawn without replacement from the ``n`` are all incorrect.
    Computed as a product, never forming the binomials (which overflow floats for large ``n``):

        C(n - c, k) / C(n, k) = prod_{i=0}^{k-1} (n - c - i) / (n - i) = prod_{j=n-c+1}^{n} (1 - k / j)

    using whichever form has fewer factors (``k`` or ``c``); every factor is in ``[0, 1]``. Returns 1.0 when
    ``n - c < k`` (every k-subset contains a correct sample). Requires ``0 <= c <= n`` and ``1 <= k <= n``
    (``k > n`` raises ``ValueError``: the estimator is undefined).
    """
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"k={k} > n={n}: pass@k needs at least k samples per prompt")
    if n - c < k:
        return 1.0
    ratio = 1.0
    if k <= c:
        for i in range(k):
            ratio *= (n - c - i) / (n - i)
    else:
        for j in range(n - c + 1, n + 1):
            ratio *= 1.0 - k / j
    return 1.0 - ratio


def summarize_correctness(correct: Sequence[Sequence[bool]], ks: Sequence[int]) -> dict[str, float]:
    """Mean over prompts of :func:`pass_at_k` for each ``k``: ``{"pass@1": ..., "pass@4": ...}`` (keys in
    increasing ``k``).

    ``correct[p]`` holds one boolean per sample of prompt ``p``; prompts may have different sample counts, but
    each needs at least ``max(ks)`` samples (``ValueError`` otherwise, naming the prompt).
    """
    if len(correct) == 0:
        raise ValueError("correct is empty: no prompts to summarize")
    ks = sorted({_check_int("k", k) for k in ks})
    if not ks:
        raise ValueError("ks is empty")
    totals = {k: 0.0 for k in ks}
    for p, samples in enumerate(correct):
        n, c = len(samples), sum(bool(s) for s in samples)
        if n < ks[-1]:
            raise ValueError(f"prompt {p} has {n} samples, fewer than k={ks[-1]}")
        for k in ks:
            totals[k] += pass_at_k(n, c, k)
    return {f"pass@{k}": totals[k] / len(correct) for k in ks}


def correctness(components: Mapping[str, Sequence[float]]) -> list[bool]:
    """A sample is correct when the first reward component (the verifier) gives full marks."""
    first = next(iter(components.values()))
    return [s >= 1.0 - 1e-6 for s in first]


def sort_metric_names(names) -> list[str]:
    """``pass@k`` names first by increasing ``k``, then every other name alphabetically."""

    def key(name: str):
        m = re.fullmatch(r"pass@(\d+)", name)
        return (0, int(m.group(1)), name) if m else (1, 0, name)

    return sorted(set(names), key=key)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return f"{float(value):.4f}"
    return str(value)


def print_summary_table(before: Mapping[str, float], after: Mapping[str, float], title: str, console=None):
    """Print a ``rich`` table with one row per metric (union of both dicts' keys, ordered by
    :func:`sort_metric_names`) and the columns before / after / delta (``after - before``, signed).

    A metric missing on one side shows ``-`` there and no delta. For ``pass@k`` rows a positive delta is green and
    a negative one red (higher is better); other deltas are uncoloured. Returns the ``rich.table.Table``.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric", style="bold")
    for col in ("before", "after", "delta"):
        table.add_column(col, justify="right")
    for name in sort_metric_names([*before.keys(), *after.keys()]):
        b, a = before.get(name), after.get(name)
        delta = "-"
        numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (a, b))
        if numeric:
            assert a is not None and b is not None  # numeric: both are real numbers
            d = float(a) - float(b)
            delta = f"{d:+.4f}"
            if name.startswith("pass@") and d != 0:
                delta = f"[{'green' if d > 0 else 'red'}]{delta}[/]"
        table.add_row(escape(name), escape(_fmt(b)), escape(_fmt(a)), delta)
    (console or Console()).print(table)
    return table
