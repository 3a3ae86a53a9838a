"""PNG plots of training curves (from ``metrics.jsonl``) and of pass@k curves.

Rendering uses matplotlib's Agg canvas, chosen inside each function (``FigureCanvasAgg`` on a bare ``Figure``):
nothing happens at import, it works headless, and it never touches ``pyplot`` or the global backend of a program
that has its own interactive figures open. PNGs are written atomically.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Mapping

from rlkit.utils.checkpoint import atomic_write_bytes
from rlkit.utils.metrics import read_metrics

__all__ = ["PREFERRED_SUBSTRINGS", "default_plot_keys", "plot_pass_at_k", "plot_training_curves"]

PREFERRED_SUBSTRINGS = ("reward", "kl", "entropy", "loss")
MAX_DEFAULT_KEYS = 9


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def default_plot_keys(rows: list[dict], limit: int = MAX_DEFAULT_KEYS) -> list[str]:
    """Numeric keys other than ``step``/``time`` with at least one finite value, at most ``limit``.

    Order: keys containing ``reward``, then ``kl``, ``entropy``, ``loss`` (the first of these substrings a key
    contains decides its group), then all other keys; first-appearance order within a group.
    """
    seen: dict[str, bool] = {}
    for row in rows:
        for k, v in row.items():
            if k in ("step", "time") or not _is_number(v):
                continue
            seen[k] = seen.get(k, False) or math.isfinite(v)
    keys = [k for k, finite in seen.items() if finite]

    def group(k: str) -> int:
        low = k.lower()
        return next((i for i, s in enumerate(PREFERRED_SUBSTRINGS) if s in low), len(PREFERRED_SUBSTRINGS))

    return sorted(keys, key=group)[:limit]  # sorted() is stable: first-appearance order within a group


def _new_figure(nrows: int, ncols: int, width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, out_png) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(Path(out_png), buf.getvalue())


def plot_training_curves(metrics_path: str | os.PathLike, out_png: str | os.PathLike,
                         keys: list[str] | None = None) -> list[str]:
    """Plot metrics from ``metrics.jsonl`` (file or its directory) into ``out_png``: one subplot per key, value
    against ``step`` (non-finite points leave gaps), three subplots per row.

    ``keys=None`` picks :func:`default_plot_keys` (up to 9, reward/kl/entropy/loss first). Explicit keys must each
    appear in the file as numbers (``ValueError`` otherwise). Returns the list of plotted keys, in subplot order.
    """
    rows = read_metrics(metrics_path)
    if not rows:
        raise ValueError(f"{metrics_path}: no metrics to plot")
    if keys is None:
        keys = default_plot_keys(rows)
        if not keys:
            raise ValueError(f"{metrics_path}: no numeric metrics besides step/time")
    else:
        keys = list(keys)
        if not keys:
            raise ValueError("keys is empty")
        present = {k for row in rows for k, v in row.items() if _is_number(v)}
        missing = [k for k in keys if k not in present]
        if missing:
            raise ValueError(f"keys not found in {metrics_path}: {missing}")
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = _new_figure(nrows, ncols, 4.2, 3.0)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        pts = [(r["step"], r[key]) for r in rows if key in r and _is_number(r[key]) and "step" in r]
        pts.sort(key=lambda p: p[0])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    _save_png(fig, out_png)
    return keys


def plot_pass_at_k(curves: Mapping[str, Mapping[int, float]], out_png: str | os.PathLike) -> Path:
    """Plot pass@k against k (log2 x-axis, ticks at the k values used) with one line per label, e.g.
    ``{"before": {1: 0.31, 4: 0.52, 16: 0.70}, "after": {...}}``. Returns ``out_png`` as a Path."""
    if not curves:
        raise ValueError("curves is empty")
    all_ks = sorted({int(k) for curve in curves.values() for k in curve})
    if not all_ks or all_ks[0] < 1:
        raise ValueError(f"every curve needs k values >= 1, got {all_ks}")
    fig = _new_figure(1, 1, 5.5, 4.0)
    ax = fig.subplots()
    for label, curve in curves.items():
        ks = sorted(curve)
        ax.plot(ks, [float(curve[k]) for k in ks], marker="o", label=str(label))
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.minorticks_off()
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_png(fig, out_png)
