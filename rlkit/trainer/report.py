"""The end of a training run, shared by the online (GRPO/PPO) and DPO drivers: ``summary.json``, the before/after
table, the training-curve plot and the closing line, in that order."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def finish_run(out: Path, summary: dict, console, plot: bool, table: Callable[[], None] | None = None) -> dict:
    """Write ``summary`` to ``<out>/summary.json`` (atomically), print the table (``table()``, when given), plot
    ``metrics.jsonl`` to ``training_curves.png`` when ``plot`` and say where the summary is. Returns ``summary``."""
    from rlkit.utils.checkpoint import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    if table is not None:
        table()
    if plot:
        from rlkit.utils.plotting import plot_training_curves

        plot_training_curves(out / "metrics.jsonl", out / "training_curves.png")
    console.print(f"done in {summary['wall_time_s']:.0f}s -> {out / 'summary.json'}")
    return summary
