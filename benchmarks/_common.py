"""Shared by the benchmark scripts: where and how results are written, and what a process tree holds in memory."""

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


def proc_table() -> dict[int, dict]:
    """``{pid: {ppid, cmdline, rss, start, uid}}`` for every readable process (psutil, else ``/proc``)."""
    table = {}
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil:
        for p in psutil.process_iter(["pid", "ppid", "cmdline", "memory_info", "create_time", "uids"]):
            if (info := p.info)["memory_info"] is not None and info["uids"] is not None:
                table[info["pid"]] = {
                    "ppid": info["ppid"],
                    "cmdline": " ".join(info["cmdline"] or []),
                    "rss": info["memory_info"].rss,
                    "start": info["create_time"],
                    "uid": info["uids"].real,
                }
        return table
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    boot = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = open(f"/proc/{name}/stat").read()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            cmd = open(f"/proc/{name}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            rss = int(open(f"/proc/{name}/statm").read().split()[1]) * page
            table[int(name)] = {
                "ppid": int(fields[1]),
                "cmdline": cmd,
                "rss": rss,
                "start": boot + int(fields[19]) / tick,
                "uid": os.stat(f"/proc/{name}").st_uid,
            }
        except (OSError, ValueError, IndexError):  # the process ended while being read
            continue
    return table


def read_hwm(pid: int) -> int | None:
    """The process's own peak RSS so far (``VmHWM``, kept by the kernel: no sample can miss it)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None


def read_pss(pid: int) -> int | None:
    """The process's proportional set size now (``smaps_rollup``: each shared page split between its mappers); reading
    it walks the page tables under the process's mmap lock, so it is not free to sample often."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return None


def tree_pids(table: dict[int, dict], root: int) -> set[int]:
    """``root`` and all its descendants present in a :func:`proc_table`."""
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info["ppid"], []).append(pid)
    pids, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in pids:
            pids.add(pid)
            todo.extend(children.get(pid, []))
    return pids
