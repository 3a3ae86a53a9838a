"""glibc's ``malloc`` told to keep the memory a training step frees, for the next step: :func:`tune_allocator`.

Every step allocates and frees the same tensors (activations, gradients, KV caches, logits). With glibc's defaults
a freed block at the top of the heap beyond ``M_TRIM_THRESHOLD`` goes back to the kernel, and blocks above
``M_MMAP_THRESHOLD`` are mapped and unmapped one by one (both thresholds adapt, from 128 KiB, to the largest block
freed so far, up to 32 MiB for mmap). So the next step page-faults the same memory in again, and the kernel zeroes
each page: CPU time, and memory bandwidth the other thread of an async step wants. This is the allocator churn that
makes Intel's and vLLM's CPU guides preload tcmalloc or jemalloc; rlkit sets the three glibc knobs that stop it
instead, with no extra library, in every process it runs a role in (:func:`rlkit.workers.common.setup_process`):

* ``M_MMAP_THRESHOLD`` = 32 MiB: blocks up to 32 MiB come from the heap (fixed, where glibc would reach it only
  after freeing one that large);
* ``M_TRIM_THRESHOLD`` = 1 GiB: free memory at the top of the heap is returned to the kernel only beyond 1 GiB;
* ``M_TOP_PAD`` = 64 MiB: the heap grows in steps of at least 64 MiB (address space; pages count once touched).

Measured (the tiny size's fastest setting, bf16-mixed, async, 1 thread, 2-core EPYC, 3 interleaved runs each, the
same settings given as glibc's ``MALLOC_*_`` variables): 0.092-0.095 s a step with glibc's defaults, 0.082-0.085
s tuned; peak RSS +1-2%. Setting only one of them is slower than the defaults (an explicit setting switches the
adaptive thresholds off; a trim threshold alone made the step twice as slow).

Not applied, and :func:`tune_allocator` says why: with ``RLKIT_MALLOC=default``; when any ``MALLOC_*_`` variable
of glibc is set (the user tuned it); off Linux or off glibc (musl, macOS); when ``LD_PRELOAD`` names another
allocator (tcmalloc, jemalloc, mimalloc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {
    "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 32 * 2**20),
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 2**30),
    "M_TOP_PAD": (M_TOP_PAD, 64 * 2**20),
}
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
OTHER_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")

_applied: dict[str, int] | None = None


def why_not_tune(environ=None) -> str | None:
    """``None`` when :func:`tune_allocator` would set glibc's knobs here, else why it leaves the allocator alone."""
    env = os.environ if environ is None else environ
    if env.get("RLKIT_MALLOC", "").strip().lower() == "default":
        return "RLKIT_MALLOC=default"
    if set_by_user := [v for v in GLIBC_VARIABLES if v in env]:
        return f"{set_by_user[0]} is set"
    if other := [a for a in OTHER_ALLOCATORS if a in env.get("LD_PRELOAD", "")]:
        return f"LD_PRELOAD has {other[0]}"
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    if _glibc() is None:
        return "not glibc"
    return None


def _glibc():
    """The process's C library if it is glibc (it has ``gnu_get_libc_version``), else ``None``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator() -> dict[str, int]:
    """Set :data:`SETTINGS` with ``mallopt`` once per process (later calls return the first result); returns what
    was set, ``{}`` when :func:`why_not_tune` gives a reason."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = {}
    if why_not_tune() is None:
        libc = _glibc()
        for name, (param, value) in SETTINGS.items():
            if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
                _applied[name] = value
    return _applied


def allocator_line() -> str:
    """For a run's header: ``glibc malloc tuned`` or ``glibc malloc as is (<why>)``."""
    applied = tune_allocator()
    return "glibc malloc tuned" if applied else f"malloc as is ({why_not_tune() or 'mallopt refused'})"
