"""Processes and memory of the actor placement on one machine: a tiny ``ray.mode=actors`` GRPO job, its process tree.

    python benchmarks/bench_ray_footprint.py                 # 4 steps of the quickstart job, ray.mode=actors
    python benchmarks/bench_ray_footprint.py --set grpo.steps=8

The job (``recipes/quickstart.yaml`` without SFT, the tiny model, evaluation and logging cut down) runs in a fresh
interpreter through :func:`rlkit.trainer.grpo.run_grpo`, so Ray is started by rlkit's own
:func:`rlkit.trainer.setup.start_ray`. This (parent) process samples the worker's process tree once a second:
the number of processes, their summed PSS (``/proc/<pid>/smaps_rollup``: shared pages split between the processes
mapping them, so the sum is the tree's share of memory) and RSS, and at the sample with the most PSS the
per-process breakdown (Ray's services by their executable or module, actors by their ``ray::`` title). Process
counts and PSS do not depend on how busy the machine is, unlike timings. Results: ``--out`` (default
``benchmarks/results/bench_ray_footprint.json``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import proc_table, read_pss, tree_pids, write_result  # noqa: E402  (benchmarks/ is the script's directory)

ROOT = Path(__file__).resolve().parent.parent


def _name(cmdline: str) -> str:
    """A short name for a process of the tree: the actor's title, the Ray service's module or executable."""
    if cmdline.startswith("ray::"):
        return cmdline.split()[0]
    words = cmdline.split()
    for w in words:
        if w.endswith(".py") or "/ray/" in w and not w.endswith("python"):
            return Path(w).name
    if "-m" in words and words.index("-m") + 1 < len(words):
        return words[words.index("-m") + 1]
    return Path(words[0]).name if words else "?"


class TreeSampler(threading.Thread):
    def __init__(self, root: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.max_procs = self.peak_pss = self.peak_rss = 0
        self.at_peak: list[dict] = []
        self._stop_event = threading.Event()

    def sample(self) -> None:
        table = proc_table()
        pids = tree_pids(table, self.root)
        rows = [
            {
                "pid": p,
                "name": _name(table[p]["cmdline"]),
                "rss_mb": table[p]["rss"] / 2**20,
                "pss_mb": (read_pss(p) or 0) / 2**20,
            }
            for p in sorted(pids)
        ]
        self.max_procs = max(self.max_procs, len(rows))
        self.peak_rss = max(self.peak_rss, sum(r["rss_mb"] for r in rows))
        if (pss := sum(r["pss_mb"] for r in rows)) > self.peak_pss:
            self.peak_pss, self.at_peak = pss, rows

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def worker(a) -> None:
    from rich.console import Console

    from rlkit.config import load_recipe
    from rlkit.trainer.grpo import run_grpo

    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [
            f"output_dir={a.work_dir}/run",
            "sft.enabled=false",
            "model.name_or_path=tiny",
            "grpo.steps=4",
            "ray.mode=actors",
            "eval.before=false",
            "eval.kl_to_initial=false",
            "eval.num_prompts=1",
            "eval.n_samples=1",
            "eval.ks=[1]",
            "logging.tensorboard=false",
            "logging.plot=false",
            "checkpoint.save_final=false",
            *a.set,
        ],
    )
    run_grpo(recipe, console=Console(soft_wrap=True))


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra recipe override")
    p.add_argument("--out", default=None, help="JSON result file (default benchmarks/results/bench_ray_footprint.json)")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.work_dir = str(Path(a.work_dir or tempfile.mkdtemp(prefix="bench_ray_footprint_")).resolve())
    Path(a.work_dir).mkdir(parents=True, exist_ok=True)
    if a.worker:
        worker(a)
        return None
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--work-dir",
        a.work_dir,
        *[f"--set={kv}" for kv in a.set],
    ]
    log = Path(a.work_dir) / "worker.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
        tree = TreeSampler(proc.pid)
        tree.start()
        rc = proc.wait()
        tree.stop()
    if rc != 0:
        raise RuntimeError(f"worker failed (rc {rc}); log {log}:\n{log.read_text()[-3000:]}")
    by_name: dict[str, dict] = {}
    for r in tree.at_peak:
        b = by_name.setdefault(r["name"], {"count": 0, "pss_mb": 0.0, "rss_mb": 0.0})
        b["count"] += 1
        b["pss_mb"] += r["pss_mb"]
        b["rss_mb"] += r["rss_mb"]
    warnings = sorted({line.strip() for line in log.read_text().splitlines() if "WARNING" in line or "Warning" in line})
    result = {
        "benchmark": "bench_ray_footprint",
        "overrides": a.set,
        "max_processes": tree.max_procs,
        "peak_pss_mb": tree.peak_pss,
        "peak_rss_mb": tree.peak_rss,
        "wall_s": time.perf_counter() - t0,
        "at_peak_pss": by_name,
        "warnings": warnings,
        "log": str(log),
    }
    print(f"max processes {tree.max_procs}, peak summed PSS {tree.peak_pss:.0f} MB (RSS {tree.peak_rss:.0f} MB)")
    print(f"{'process':<40} {'n':>3} {'PSS MB':>8} {'RSS MB':>8}")
    for name, b in sorted(by_name.items(), key=lambda kv: -kv[1]["pss_mb"]):
        print(f"{name:<40} {b['count']:>3} {b['pss_mb']:>8.0f} {b['rss_mb']:>8.0f}")
    for w in warnings:
        print("log:", w[:200])
    write_result("bench_ray_footprint", result, a.out, f" (log {log})")
    return result


if __name__ == "__main__":
    main()
