"""Shared by the benchmark scripts: where and how results are written."""

from __future__ import annotations

from pathlib import Path

from rlkit.utils.checkpoint import atomic_write_json


def write_result(name: str, result: dict, out: str | None, note: str = "") -> Path:
    """Write ``result`` as JSON to ``out`` (default ``benchmarks/results/<name>.json``) atomically and say where."""
    path = Path(out or Path(__file__).resolve().parent / "results" / f"{name}.json")
    atomic_write_json(path, result)
    print(f"\nwrote {path}{note}")
    return path
