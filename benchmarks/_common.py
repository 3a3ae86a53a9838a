"""Shared by the benchmark scripts: where and how results are written."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from rlkit.utils.checkpoint import atomic_write_json


def write_result(name: str, result: dict, out: str | None, note: str = "") -> Path:
    """Write ``result`` as JSON to ``out`` (default ``benchmarks/results/<name>.json``) atomically and say where."""
    path = Path(out or Path(__file__).resolve().parent / "results" / f"{name}.json")
    atomic_write_json(path, result)
    print(f"\nwrote {path}{note}")
    return path


def run_worker(script: str, mode: str, args: list[str]) -> dict:
    """Run ``script --worker --mode MODE ARGS`` in a fresh interpreter with ``MALLOC_MMAP_THRESHOLD_=1 MiB`` (freed
    buffers go back to the OS, so RSS follows live tensors) and return the JSON on its last stdout line."""
    cmd = [sys.executable, script, "--worker", "--mode", mode, *args]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def rss_mb() -> float:
    """The resident set now (``VmRSS``; Linux), below ``ru_maxrss`` when imports peaked higher."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return max_rss_mb()
