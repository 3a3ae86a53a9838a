"""The ablation report: ``report/{table.md, paired.md, table.csv, cells.csv, curves.png, pass_at_k.png,
kl_frontier.png, index.html}`` from the cells' ``summary.json`` and ``metrics.jsonl``.

Every number is a mean +- sample standard deviation (n-1) over the seeds of a group; the first row is the initial
(SFT) policy before GRPO, averaged over the distinct seeds. ``paired.md`` compares every group with the first one
seed by seed (same warm start, same held-out prompts within a seed): the mean paired difference, its standard error
``sd/sqrt(n)``, and ``*`` where the 95% t-interval of the mean (``n - 1`` degrees of freedom) excludes 0, i.e.
``|mean| > t_{0.975, n-1} SE`` (4.30 SE with 3 seeds, 2.26 with 10): a difference the seeds resolve.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import statistics
from pathlib import Path

from rlkit.utils.checkpoint import atomic_write_bytes
from rlkit.utils.metrics import read_metrics

from .grid import Cell

#: (column title, how to get it from a cell's record)
COLUMNS = [
    ("final reward", "final_reward"),
    ("greedy acc", "greedy_accuracy"),
    ("KL(pi||pi0)", "kl_to_initial"),
    ("entropy", "entropy"),
    ("length", "response_length"),
    ("GRPO time (s)", "train_time_s"),
]
CURVE_KEYS = [
    ("reward/mean", "train reward"),
    ("kl_initial/k3", "KL to initial policy (k3)"),
    ("policy/entropy", "token entropy"),
]


def cell_record(cell_dir: Path) -> dict | None:
    """The numbers of one finished cell, or None if it has no summary."""
    try:
        summary = json.loads((cell_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    rows = read_metrics(cell_dir / "metrics.jsonl") if (cell_dir / "metrics.jsonl").exists() else []
    rewards = [r["reward/mean"] for r in rows if isinstance(r.get("reward/mean"), (int, float))]
    tail = rewards[-max(1, len(rewards) // 10) :]
    after = summary.get("eval_after") or {}
    rec = {k: v for k, v in after.items() if k.startswith("pass@") and k != "pass@k"}
    rec.update({k: after.get(k) for k in ("greedy_accuracy", "kl_to_initial", "entropy", "response_length")})
    rec["final_reward"] = sum(tail) / len(tail) if tail else None
    rec["train_time_s"] = summary.get("train_time_s")
    rec["before"] = summary.get("eval_before")
    return rec


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _fmt(mean, std, digits=3) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _pass_keys(records) -> list[str]:
    ks = sorted({int(k.split("@")[1]) for r in records for k in r if k.startswith("pass@")})
    return [f"pass@{k}" for k in ks]


def aggregate(cells: list[Cell], out: Path) -> tuple[list[str], dict[str, dict], dict[str, list[dict]], list[str]]:
    """``(metric keys, {group: {key: (mean, std, n)}}, {group: [cell records]}, missing cell names)``; the
    initial policy is the group ``"initial (before GRPO)"``."""
    groups: dict[str, list[dict]] = {}
    before_by_seed: dict[int, dict] = {}
    missing = []
    for cell in cells:
        rec = cell_record(out / "cells" / cell.name)
        if rec is None:
            missing.append(cell.name)
            continue
        rec["cell"], rec["seed"] = cell.name, cell.seed
        groups.setdefault(cell.group, []).append(rec)
        if rec["before"]:
            before_by_seed.setdefault(cell.seed, rec["before"])
    all_recs = [r for recs in groups.values() for r in recs]
    keys = ["final_reward"] + _pass_keys(all_recs) + [k for _, k in COLUMNS[1:]]
    table: dict[str, dict] = {}
    if before_by_seed:
        befores = list(before_by_seed.values())
        table["initial (before GRPO)"] = {k: (*_mean_std([b.get(k) for b in befores]), len(befores)) for k in keys}
    for group, recs in groups.items():
        table[group] = {k: (*_mean_std([r.get(k) for r in recs]), len(recs)) for k in keys}
    return keys, table, groups, missing


def _title(key: str) -> str:
    return dict((k, t) for t, k in COLUMNS).get(key, key)


def markdown_table(keys: list[str], table: dict[str, dict]) -> str:
    head = ["group", "seeds"] + [_title(k) for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, row in table.items():
        n = max(v[2] for v in row.values())
        cells = [_fmt(row[k][0], row[k][1], 1 if k == "train_time_s" else 3) for k in keys]
        lines.append(f"| {group} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: metrics of the paired comparison (the largest pass@k is added)
PAIRED_KEYS = ("pass@1", "greedy_accuracy", "kl_to_initial", "entropy")
#: Student's t, 97.5% quantile, by degrees of freedom (two-sided 95%); beyond 30: the normal 1.96
T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
}


def t975(df: int) -> float:
    return T975.get(df, 1.96)


def paired_table(groups: dict[str, list[dict]], keys: list[str]) -> str:
    """Per-seed differences of every group from the first group: ``mean ± SE (n)``, ``*`` where the 95% t-interval
    excludes 0."""
    names = list(groups)
    if len(names) < 2:
        return ""
    largest = [k for k in keys if k.startswith("pass@")][-1:]
    cols = list(dict.fromkeys(k for k in (PAIRED_KEYS[0], *largest, *PAIRED_KEYS[1:]) if k in keys))
    base = {r["seed"]: r for r in groups[names[0]]}
    lines = [
        f"Paired differences from `{names[0]}` (same seed: same warm start and held-out prompts); mean ± SE over "
        "seeds, * where the 95% t-interval excludes 0 (|mean| > t_0.975,n-1 SE).",
        "",
        "| group | seeds | " + " | ".join(f"Δ {_title(k)}" for k in cols) + " |",
        "|" + "---|" * (len(cols) + 2),
    ]
    for name in names[1:]:
        cells = []
        n = 0
        for k in cols:
            diffs = [
                float(r[k]) - float(base[r["seed"]][k])
                for r in groups[name]
                if r["seed"] in base
                and isinstance(r.get(k), (int, float))
                and isinstance(base[r["seed"]].get(k), (int, float))
            ]
            n = max(n, len(diffs))
            if not diffs:
                cells.append("n/a")
                continue
            mean = statistics.fmean(diffs)
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
            star = "*" if se is not None and abs(mean) > t975(len(diffs) - 1) * se else ""
            cells.append(f"{mean:+.3f}" + (f" ± {se:.3f}" if se is not None else "") + star)
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[list]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode()


def _smooth(ys: list[float], w: int) -> list[float]:
    out, acc = [], []
    for y in ys:
        acc.append(y)
        acc = acc[-w:]
        out.append(sum(acc) / len(acc))
    return out


def plot_curves(groups: dict[str, list[dict]], out: Path, png: Path) -> None:
    """Training curves, one line per group (mean over seeds at each step, moving average over ~5% of the run)."""
    from rlkit.utils.plotting import _new_figure, _save_png

    fig = _new_figure(1, len(CURVE_KEYS), 4.6, 3.4)
    axes = fig.subplots(1, len(CURVE_KEYS), squeeze=False).ravel()
    for group, recs in groups.items():
        runs = [read_metrics(out / "cells" / r["cell"] / "metrics.jsonl") for r in recs]
        for ax, (key, title) in zip(axes, CURVE_KEYS):
            by_step: dict[int, list[float]] = {}
            for rows in runs:
                for row in rows:
                    if isinstance(row.get(key), (int, float)) and math.isfinite(row[key]):
                        by_step.setdefault(row["step"], []).append(row[key])
            steps = sorted(by_step)
            if steps:
                ys = _smooth([statistics.fmean(by_step[s]) for s in steps], max(1, len(steps) // 20))
                ax.plot(steps, ys, label=group, linewidth=1.3)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    _save_png(fig, png)


def plot_frontier(groups: dict[str, list[dict]], png: Path) -> None:
    """SALSA's view: held-out pass@1 against KL from the initial policy, one point per cell."""
    from rlkit.utils.plotting import _new_figure, _save_png

    fig = _new_figure(1, 1, 5.5, 4.2)
    ax = fig.subplots()
    for group, recs in groups.items():
        pts = [(r["kl_to_initial"], r.get("pass@1")) for r in recs if r.get("kl_to_initial") is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=group, s=28)
    ax.set_xlabel("KL(policy || initial) per token, held-out samples")
    ax.set_ylabel("held-out pass@1")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    _save_png(fig, png)


def write_report(out: str | Path, cells: list[Cell], console=None) -> Path:
    from rlkit.utils.plotting import plot_pass_at_k

    out = Path(out)
    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    keys, table, groups, missing = aggregate(cells, out)
    md = markdown_table(keys, table)
    atomic_write_bytes(rep / "table.md", md.encode())
    paired = paired_table(groups, keys)
    atomic_write_bytes(rep / "paired.md", paired.encode())
    md_all = md + ("\n" + paired if paired else "")
    head = ["group", "seeds"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")]
    rows = [head] + [
        [g, max(v[2] for v in row.values())] + [x for k in keys for x in row[k][:2]] for g, row in table.items()
    ]
    atomic_write_bytes(rep / "table.csv", _csv(rows))
    cell_rows = [["group", "seed", "cell"] + keys] + [
        [g, r["seed"], r["cell"]] + [r.get(k) for k in keys] for g, recs in groups.items() for r in recs
    ]
    atomic_write_bytes(rep / "cells.csv", _csv(cell_rows))
    images = []
    if groups:
        plot_curves(groups, out, rep / "curves.png")
        pk = {
            g: {int(k.split("@")[1]): row[k][0] for k in keys if k.startswith("pass@") and row[k][0] is not None}
            for g, row in table.items()
        }
        plot_pass_at_k({g: c for g, c in pk.items() if c}, rep / "pass_at_k.png")
        plot_frontier(groups, rep / "kl_frontier.png")
        images = ["curves.png", "pass_at_k.png", "kl_frontier.png"]
    atomic_write_bytes(rep / "index.html", _html(out, md_all, table, keys, groups, images, missing).encode())
    if console is not None:
        if console.is_terminal:
            from rich.markdown import Markdown

            console.print(Markdown(md_all))
        else:  # logs and CI: the markdown itself, one row per line
            console.print(md_all, markup=False, highlight=False, soft_wrap=True)
        if missing:
            console.print(f"[yellow]missing cells (not finished)[/]: {', '.join(missing)}")
        console.print(f"report -> {rep / 'index.html'}")
    return rep


def _html(out: Path, md: str, table, keys, groups, images, missing) -> str:
    meta = {}
    if (out / "ablation.json").exists():
        meta = json.loads((out / "ablation.json").read_text())
    esc = html.escape
    th = "".join(f"<th>{esc(t)}</th>" for t in ["group", "seeds"] + [_title(k) for k in keys])
    trs = []
    for group, row in table.items():
        n = max(v[2] for v in row.values())
        tds = "".join(f"<td>{esc(_fmt(row[k][0], row[k][1], 1 if k == 'train_time_s' else 3))}</td>" for k in keys)
        trs.append(f"<tr><td>{esc(group)}</td><td>{n}</td>{tds}</tr>")
    imgs = "".join(
        f'<figure><img src="{esc(i)}" alt="{esc(i)}"><figcaption>{esc(i)}</figcaption></figure>' for i in images
    )
    cells = []
    for group, recs in groups.items():
        for r in recs:
            base = f"../cells/{r['cell']}"
            cells.append(
                f'<li>{esc(group)} seed {r["seed"]}: <a href="{esc(base)}/train.log">log</a> · '
                f'<a href="{esc(base)}/summary.json">summary</a> · '
                f'<a href="{esc(base)}/training_curves.png">curves</a></li>'
            )
    miss = f"<p class=warn>Not finished: {esc(', '.join(missing))}</p>" if missing else ""
    cmd = meta.get("command") or f"rlkit ablate {meta.get('recipe', '')}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>rlkit ablation</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
img{{max-width:100%}}figure{{display:inline-block;margin:0 1em 1em 0}}.warn{{color:#a60}}</style></head><body>
<h1>rlkit ablation</h1><p><code>{esc(cmd)}</code></p>
<p>Held-out evaluation after GRPO; mean ± std over seeds (sample std). KL(pi||pi0): Monte-Carlo estimate per
generated token on the held-out samples. Final reward: mean training reward over the last 10% of steps.</p>
<table><tr>{th}</tr>{"".join(trs)}</table>{miss}
{imgs}<h2>Cells</h2><ul>{"".join(cells)}</ul>
<h2>Markdown</h2><pre>{esc(md)}</pre></body></html>
"""
