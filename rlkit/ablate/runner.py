"""``rlkit ablate``: run every cell of a grid as its own ``rlkit train`` process, skip finished ones, then report.

Why one process per cell: a cell that crashes (or is killed) cannot take the others down, each cell's log is its
own file, and the exact command of each cell is recorded so it can be re-run by hand. Cells share SFT warm starts
through ``sft.cache_dir`` (one per seed and SFT setting, trained once, guarded by a file lock), so an ablation of
``R`` regularizers x ``S`` seeds costs ``S`` SFT runs, not ``R x S``.

Resuming: a cell is finished when its ``summary.json`` exists and the resolved recipe it ran (hashed into
``cell.json``) is the one the grid asks for now. Anything else in a cell directory (a crash, a kill, changed
settings) is cleared and the cell runs again from scratch.

Parallel cells (``--parallel N``) are separate processes; with ``ray.address`` set in the recipe each one joins
that cluster as its own Ray job, so a cluster with room runs N cells at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rlkit._config import ConfigError, validate_model
from rlkit.config import SweepConfig, apply_overrides, build_recipe, load_yaml
from rlkit.utils.checkpoint import atomic_write_json

from .grid import Cell, expand, parse_sweep_arg


def plan(recipe_path: str, sweeps: list[str], seeds: list[int] | None, overrides: list[str]):
    """Resolve the grid (recipe ``sweep:`` section, then ``--sweep`` args on top) and validate every cell's recipe
    before anything runs. A ``--sweep`` key that the recipe's ``arms`` also set replaces those arms (the command
    line decides that axis). Returns ``(sweep, cells, resolved recipes by cell name)``."""
    data = apply_overrides(load_yaml(recipe_path), overrides)
    section = data.pop("sweep", None) or {}
    sweep = validate_model(SweepConfig, section, "sweep")
    for arg in sweeps:
        key, values = parse_sweep_arg(arg)
        sweep.grid[key] = values
        if any(key in arm for arm in sweep.arms.values()):
            print(f"rlkit ablate: --sweep {key}=... replaces the recipe's arms ({', '.join(sweep.arms)})", flush=True)
            sweep.arms = {}
    if seeds is not None:
        sweep.seeds = seeds
    cells = expand(sweep.grid, sweep.seeds, sweep.arms)
    resolved = {}
    for cell in cells:
        try:
            recipe = build_recipe(apply_overrides(data, cell.overrides()))
        except ConfigError as err:
            where = f"cell {cell.group} seed {cell.seed}"
            raise ConfigError(f"{where}: {err.path}" if err.path else where, err.message) from None
        resolved[cell.name] = recipe.model_dump(mode="json", exclude={"output_dir", "sweep"})
        resolved[cell.name]["sft"].pop("cache_dir", None)
    return sweep, cells, resolved


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_finished(cell_dir: Path, digest: str) -> bool:
    try:
        meta = json.loads((cell_dir / "cell.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("recipe_digest") == digest and (cell_dir / "summary.json").is_file()


def _command(recipe_path: str, overrides: list[str], cell: Cell, cell_dir: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rlkit",
        "train",
        recipe_path,
        *overrides,
        *cell.overrides(),
        f"output_dir={cell_dir}",
        f"sft.cache_dir={out / 'sft_cache'}",
        "sweep=null",
    ]


def run_ablation(
    recipe_path: str,
    out: str | Path,
    sweeps: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    parallel: int | None = None,
    report_only: bool = False,
    console=None,
) -> int:
    """Run (or resume) the grid into ``out/cells/<cell>`` and write ``out/report``. Returns the number of failed
    cells (0: everything ran)."""
    from rich.console import Console

    from .report import write_report

    console = console or Console(soft_wrap=True)  # long paths stay on one line in logs
    overrides = list(overrides or [])
    sweep, cells, resolved = plan(recipe_path, list(sweeps or []), seeds, overrides)
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out / "ablation.json",
        {
            "recipe": recipe_path,
            "overrides": overrides,
            "grid": sweep.grid,
            "arms": sweep.arms,
            "seeds": sweep.seeds,
            "cells": [{"name": c.name, "group": c.group, "seed": c.seed} for c in cells],
            "command": " ".join(shlex.quote(a) for a in ["rlkit", "ablate", *sys.argv[2:]])
            if sys.argv[1:2] == ["ablate"]
            else None,
        },
    )
    groups = sorted({c.group for c in cells}, key=[c.group for c in cells].index)
    console.print(
        f"[bold]rlkit ablate[/] {recipe_path}: {len(groups)} groups x {len(sweep.seeds)} seeds = "
        f"{len(cells)} cells -> {out}"
    )
    failed: list[str] = []
    if not report_only:
        failed = _run_cells(recipe_path, overrides, cells, resolved, out, parallel or sweep.parallel, console)
    write_report(out, cells, console=console)
    if failed:
        console.print(f"[red]{len(failed)} cell(s) failed[/]: " + ", ".join(failed) + " (see cells/<cell>/train.log)")
    return len(failed)


def _run_cells(recipe_path, overrides, cells, resolved, out: Path, parallel: int, console) -> list[str]:
    todo = []
    for cell in cells:
        cell_dir = out / "cells" / cell.name
        digest = _digest(resolved[cell.name])
        if is_finished(cell_dir, digest):
            console.print(f"  {cell.group} seed {cell.seed}: finished earlier, skipped")
            continue
        todo.append((cell, cell_dir, digest))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    running: list[tuple] = []
    failed: list[str] = []
    n_done = len(cells) - len(todo)

    def finish(entry) -> None:
        nonlocal n_done
        cell, cell_dir, proc, log, t0 = entry
        log.close()
        n_done += 1
        took = time.time() - t0
        if proc.returncode == 0 and (cell_dir / "summary.json").is_file():
            s = json.loads((cell_dir / "summary.json").read_text())
            before, after = s.get("eval_before") or {}, s.get("eval_after") or {}
            change = f"pass@1 {before.get('pass@1', float('nan')):.3f} -> {after.get('pass@1', float('nan')):.3f}"
            console.print(f"  [{n_done}/{len(cells)}] {cell.group} seed {cell.seed}: done in {took:.0f}s, {change}")
        else:
            failed.append(cell.name)
            tail = (cell_dir / "train.log").read_text(errors="replace").strip().splitlines()[-3:]
            console.print(
                f"  [red][{n_done}/{len(cells)}] {cell.group} seed {cell.seed}: FAILED "
                f"(exit {proc.returncode})[/] " + " | ".join(tail)
            )

    try:
        _launch_all(todo, running, parallel, finish, recipe_path, overrides, out, env, console)
    except BaseException:  # Ctrl-C or an error here: leave no orphan cells behind (they rerun on resume)
        for entry in running:
            entry[2].terminate()
        raise
    return failed


def _launch_all(todo, running, parallel, finish, recipe_path, overrides, out, env, console) -> None:
    for cell, cell_dir, digest in todo:
        while len(running) >= parallel:
            time.sleep(0.5)
            for entry in [e for e in running if e[2].poll() is not None]:
                running.remove(entry)
                finish(entry)
        if cell_dir.exists():
            shutil.rmtree(cell_dir)  # a crashed or stale attempt: start clean (metrics.jsonl is appended to)
        cell_dir.mkdir(parents=True)
        cmd = _command(recipe_path, overrides, cell, cell_dir, out)
        atomic_write_json(
            cell_dir / "cell.json",
            {
                "group": cell.group,
                "seed": cell.seed,
                "values": cell.values,
                "recipe_digest": digest,
                "command": " ".join(shlex.quote(a) for a in cmd),
            },
        )
        console.print(f"  {cell.group} seed {cell.seed}: running -> {cell_dir / 'train.log'}")
        log = open(cell_dir / "train.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        running.append((cell, cell_dir, proc, log, time.time()))
    while running:
        entry = running.pop(0)
        entry[2].wait()
        finish(entry)
