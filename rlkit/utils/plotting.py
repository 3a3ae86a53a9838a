"""PNG plots of training curves (from ``metrics.jsonl``) and of pass@k curves.

Rendering uses matplotlib's Agg canvas, chosen inside each function (``FigureCanvasAgg`` on a bare ``Figure``):
nothing happens at import, it works headless, and it never touches ``pyplot`` or the global backend of a program
that has its own interactive figures open. PNGs are written atomically.
"""

from __future__ import annotations

import io
import json
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from rlkit._extras import require
from rlkit.utils.checkpoint import atomic_write_bytes
from rlkit.utils.metrics import read_metrics

__all__ = [
    "MAX_PANELS",
    "PanelPlan",
    "default_plot_keys",
    "plan_training_panels",
    "plot_pass_at_k",
    "plot_training_curves",
]

#: panels of ``training_curves.png`` (series + the eval panel), three per row
MAX_PANELS = 12
MAX_DEFAULT_KEYS = MAX_PANELS
#: eval metrics drawn as before/after bars (all in [0, 1]); others (entropy, length, KL) have their own scales
EVAL_BAR_KEYS = ("greedy_accuracy", "pref/accuracy", "pref/logp_accuracy")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class PanelPlan:
    """What :func:`plot_training_curves` draws: ``series`` (one panel each, in order), ``eval`` (``{"before": {metric:
    value}, "after": {...}}``, one bar panel; empty: none) and ``dropped`` (series not drawn -> why: ``"constant
    0.001"``, ``"same as reward/mean"``, ``"timing"``, ``"one point"``, ``"no finite value"``, ``"over the limit"``)."""

    series: list[str] = field(default_factory=list)
    eval: dict[str, dict[str, float]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)


#: DPO's training metrics, right after its loss, in this order
DPO_KEYS = ("rewards/accuracy", "rewards/margin", "logps/chosen", "logps/rejected")


def _rank(key: str) -> tuple[int, int]:
    """Panel order: reward, reward components, loss, DPO's implicit-reward accuracy/margin and sequence log-probs,
    grad norm, each regularizer's ``<label>/value``, other KL series, entropy, response length, evaluations logged
    during training, everything else, reward failures and rollout diagnostics last."""
    low = key.lower()
    last = low.removesuffix("/mean").rsplit("/", 1)[-1]
    if low.startswith("reward/failures/") or low.startswith("rollout/"):
        return 12, 0
    if last == "reward":
        return 0, 0
    if low.startswith("reward/"):
        return 1, 0
    if low in ("loss", "loss/total"):
        return 2, 0
    if "loss" in low and not low.startswith("eval/"):
        return 3, 0
    if low in DPO_KEYS:
        return 4, DPO_KEYS.index(low)
    if "grad_norm" in low:
        return 5, 0
    if low.endswith("/value"):
        return 6, 0
    if low.startswith("eval/"):
        return 10, 0
    if "kl" in last or low.startswith("kl"):
        return 7, 0
    if "entropy" in low:
        return 8, 0
    if "length" in low:
        return 9, 0
    return 11, 0


def _series(rows: list[dict], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if "step" in r and _is_number(r.get(key))}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 + 1e-9 * max(abs(a), abs(b))


def _constant(values: list[float]) -> bool:
    lo, hi = min(values), max(values)
    return _close(lo, hi)


def _same(a: dict[int, float], b: dict[int, float]) -> bool:
    if a.keys() != b.keys():
        return False
    for step, x in a.items():
        y = b[step]
        if math.isfinite(x) != math.isfinite(y) or (math.isfinite(x) and not _close(x, y)):
            return False
    return True


def _eval_bars(summary: Mapping | None) -> dict[str, dict[str, float]]:
    """``{"before": {...}, "after": {...}}`` from a run's ``summary.json``: pass@k for each k, greedy accuracy and
    the held-out preference accuracies (DPO), where present as finite numbers."""
    bars: dict[str, dict[str, float]] = {}
    for label, key in (("before", "eval_before"), ("after", "eval_after")):
        ev = (summary or {}).get(key)
        if not isinstance(ev, Mapping):
            continue
        names = sorted((k for k in ev if k.startswith("pass@") and k[5:].isdigit()), key=lambda k: int(k[5:]))
        names += [k for k in EVAL_BAR_KEYS if k in ev]
        vals = {k: float(ev[k]) for k in names if _is_number(ev[k]) and math.isfinite(ev[k])}
        if vals:
            bars[label] = vals
    return bars


def plan_training_panels(rows: list[dict], summary: Mapping | None = None, limit: int = MAX_PANELS) -> PanelPlan:
    """Choose the panels of ``training_curves.png`` from what ``rows`` (``metrics.jsonl``) holds. A pure function.

    Candidates: numeric keys other than ``step``/``time``, in :func:`_rank` order (first appearance within a rank).
    Not drawn: ``time/*`` (timing), series with no finite value or a single point, **constant** series (every finite
    value equal within 1e-12 + 1e-9 relative, e.g. a fixed KL coefficient or a reward that never moved), and series
    **identical** to one already chosen at every step (e.g. ``reward/numeric_match`` when it is the only reward and
    equals ``reward/mean``). With a ``summary`` (``summary.json``) holding ``eval_before``/``eval_after``, one bar
    panel shows pass@k and greedy accuracy before and after. At most ``limit`` panels in all."""
    keys: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in ("step", "time") and _is_number(v) and k not in keys:
                keys.append(k)
    plan = PanelPlan(eval=_eval_bars(summary))
    room = limit - (1 if plan.eval else 0)
    chosen: dict[str, dict[int, float]] = {}
    for key in sorted(keys, key=_rank):  # stable: first-appearance order within a rank
        if key.startswith("time/"):
            plan.dropped[key] = "timing"
            continue
        series = _series(rows, key)
        finite = [v for v in series.values() if math.isfinite(v)]
        if not finite:
            plan.dropped[key] = "no finite value"
        elif len(finite) == 1:
            plan.dropped[key] = "one point"
        elif _constant(finite):
            tiny = 0 < max(map(abs, finite)) < 1e-12  # float noise around 0
            plan.dropped[key] = "constant ~0" if tiny else f"constant {finite[0]:.4g}"
        elif (twin := next((k for k, s in chosen.items() if _same(series, s)), None)) is not None:
            plan.dropped[key] = f"same as {twin}"
        elif len(chosen) >= room:
            plan.dropped[key] = "over the limit"
        else:
            chosen[key] = series
    plan.series = list(chosen)
    return plan


def default_plot_keys(rows: list[dict], limit: int = MAX_DEFAULT_KEYS) -> list[str]:
    """The series :func:`plot_training_curves` draws by default: :func:`plan_training_panels`' ``series``."""
    return plan_training_panels(rows, limit=limit).series


def _new_figure(nrows: int, ncols: int, width: float, height: float):
    require("matplotlib", why="plots (logging.plot, rlkit ablate's report)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, out_png) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(Path(out_png), buf.getvalue())


def _read_summary(metrics_path: Path) -> dict | None:
    path = (metrics_path if metrics_path.is_dir() else metrics_path.parent) / "summary.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _footer(dropped: Mapping[str, str], width: int) -> str:
    """One wrapped paragraph naming what was left out: constant series with their value, duplicates."""
    const = [f"{k} = {why.removeprefix('constant ')}" for k, why in dropped.items() if why.startswith("constant")]
    same = [f"{k} = {why.removeprefix('same as ')}" for k, why in dropped.items() if why.startswith("same as")]
    more = [k for k, why in dropped.items() if why == "over the limit"]
    parts = []
    if const:
        parts.append("constant (not drawn): " + ", ".join(const))
    if same:
        parts.append("identical to a drawn panel: " + ", ".join(same))
    if more:
        parts.append(f"not drawn ({len(more)} more): " + ", ".join(more))
    return "\n".join(textwrap.fill(p, width) for p in parts)


def _eval_panel(ax, bars: Mapping[str, Mapping[str, float]]) -> None:
    names = list(dict.fromkeys(k for vals in bars.values() for k in vals))
    width = 0.8 / max(1, len(bars))
    for i, (label, vals) in enumerate(bars.items()):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(names))]
        ys = [vals.get(k, float("nan")) for k in names]
        drawn = ax.bar(xs, ys, width, label=label, color=("0.65" if label == "before" else "C0"))
        ax.bar_label(drawn, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(
        range(len(names)),
        [n.replace("_accuracy", "").replace("pref/", "pref ") for n in names],
        fontsize=8,
        rotation=20,
    )
    ax.set_ylim(0.0, 1.12)
    ax.set_title("held-out eval" + (" before / after" if len(bars) > 1 else f" ({next(iter(bars))})"), fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, axis="y")


def plot_training_curves(
    metrics_path: str | os.PathLike, out_png: str | os.PathLike, keys: list[str] | None = None
) -> list[str]:
    """Plot metrics from ``metrics.jsonl`` (file or its directory) into ``out_png``: one subplot per series, value
    against ``step`` (non-finite points leave gaps), three subplots per row.

    ``keys=None`` chooses the panels from what the file holds (:func:`plan_training_panels`): reward and reward
    components, loss, grad norm, each regularizer's ``<label>/value``, entropy, response length and the rest, leaving
    out constant series and series identical to a drawn one (named, with their values, under the panels), plus a bar
    panel of the held-out evaluation before/after when a ``summary.json`` sits next to the file. Explicit keys are
    drawn as given and must each appear in the file as numbers (``ValueError`` otherwise). Returns the list of
    plotted series, in subplot order (the eval panel, when drawn, comes after them)."""
    metrics_path = Path(metrics_path)
    rows = read_metrics(metrics_path)
    if not rows:
        raise ValueError(f"{metrics_path}: no metrics to plot")
    bars, dropped = {}, {}
    if keys is None:
        plan = plan_training_panels(rows, _read_summary(metrics_path))
        keys, bars, dropped = plan.series, plan.eval, plan.dropped
        if not keys and not bars:  # nothing moved and nothing evaluated: draw what there is, the footer says why
            keys = [k for k, why in dropped.items() if why.startswith(("constant", "one point"))][:3]
            if not keys:
                raise ValueError(f"{metrics_path}: no numeric metrics besides step/time")
            dropped = {k: why for k, why in dropped.items() if k not in keys}
    else:
        keys = list(keys)
        if not keys:
            raise ValueError("keys is empty")
        present = {k for row in rows for k, v in row.items() if _is_number(v)}
        missing = [k for k in keys if k not in present]
        if missing:
            raise ValueError(f"keys not found in {metrics_path}: {missing}")
    n = len(keys) + (1 if bars else 0)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(nrows, ncols, 4.2, 3.0)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        pts = sorted(_series(rows, key).items())
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            linewidth=1.2,
            marker="o" if len(pts) <= 12 else None,
            markersize=3,
        )
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if bars:
        _eval_panel(axes[len(keys)], bars)
    for ax in axes[n:]:
        ax.set_visible(False)
    footer = _footer(dropped, width=58 * ncols)
    if footer:
        fig.supxlabel(footer, fontsize=8, ha="left", x=0.01, color="0.3")
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
