"""Ends what is left of the local Ray cluster once the rlkit driver that started it is gone, however it went.

Ray ties its GCS and raylet to the driver (``PR_SET_PDEATHSIG``), but not the raylet's own children: after a SIGKILL
of the driver the dashboard agent and the runtime-env agent (~180 MB together) notice the dead raylet at once, then
spend a minute trying to tell the dead GCS about it before they exit. This process is started by
:func:`rlkit.trainer.setup.start_ray` with a pipe on stdin whose only writer is the driver: end of file means the
driver has exited (normally, by a signal, or SIGKILL). It then SIGTERMs, and 2 s later SIGKILLs, every process it
saw under the raylet and the Ray processes it was given, each identified by pid *and* start time (never a reused
pid). Run with ``python -S``: standard library only, a few MB.

    python -S _ray_reaper.py RAYLET_PID [OTHER_PID ...]
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):  # a zombie is already dead
        return None
    return int(fields[1]), int(fields[19])


def _children(parent: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st and st[0] == parent:
                out.append(int(name))
    return out


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver handles it
    raylet, others = int(argv[0]), [int(x) for x in argv[1:]]
    tracked: dict[int, int] = {}  # pid -> start time

    def track(pids) -> None:
        for pid in pids:
            st = _stat(pid)
            if st and pid not in tracked:
                tracked[pid] = st[1]

    track([raylet, *others])
    fd = sys.stdin.fileno()
    while True:
        if tracked.get(raylet) is not None and _stat(raylet):  # the raylet's children so far (agents, workers)
            track(_children(raylet))
        ready, _, _ = select.select([fd], [], [], 2.0)
        if ready and not os.read(fd, 65536):
            break  # the driver is gone
    alive = lambda: [p for p, t in tracked.items() if (_stat(p) or (0, None))[1] == t]  # noqa: E731
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)


if __name__ == "__main__":
    main(sys.argv[1:])
