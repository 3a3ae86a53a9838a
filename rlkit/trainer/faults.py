"""What the driver does when things go wrong: resume points, learner failures, checkpoint pruning.

The rules (issue "reliability"): a step either completes with every sample or fails loudly; a dead rollout worker is
restarted by Ray and its shard retried with the current weights (:func:`rlkit.trainer.evaluate.generate`); a dead or
failing learner ends the job with the last complete checkpoint intact and says how to resume.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlkit.utils.checkpoint import atomic_write_bytes, list_complete_checkpoints


class TrainingError(RuntimeError):
    """A job that cannot go on; the message says why, which checkpoint is intact and how to resume."""


def find_resume_point(recipe, out: Path, console) -> Path | None:
    """The last complete training checkpoint (``COMPLETE`` marker and ``trainer_state.json``) when
    ``recipe.resume``; half-written ``.tmp-*`` directories are never considered."""
    if not recipe.resume:
        return None
    found = [p for p in list_complete_checkpoints(out / "checkpoints") if (p / "trainer_state.json").is_file()]
    if not found:
        console.print(f"resume: no complete checkpoint in {out / 'checkpoints'}; starting from the beginning")
        return None
    return found[-1]


def last_checkpoint(out: Path) -> str:
    found = list_complete_checkpoints(out / "checkpoints")
    return str(found[-1]) if found else "none (set checkpoint.save_every)"


def learner_call(ref, step: int, out: Path):
    """``ray.get`` a learner call; a learner that died or raised becomes a :class:`TrainingError` that names the
    step, the cause and the checkpoint to resume from."""
    from rlkit.workers.local import LocalRef, get, ray_error

    try:
        return get(ref)
    except ray_error("RayActorError") as err:
        cause = f"the learner process died ({type(err).__name__})"
    except ray_error("RayTaskError") as err:
        inner = err.as_instanceof_cause() if hasattr(err, "as_instanceof_cause") else err
        cause = f"{type(getattr(err, 'cause', None) or inner).__name__}: " + str(getattr(err, "cause", None) or inner)
    except Exception as err:  # an in-process learner raised (ray.mode: inprocess)
        if not isinstance(ref, LocalRef):
            raise
        cause = f"{type(err).__name__}: {err}"
    raise TrainingError(f"step {step + 1}: {cause.strip()}. Last complete checkpoint: {last_checkpoint(out)}; "
                        "continue with `rlkit train <recipe> --resume`") from None


def call_when_alive(make_call, timeout_s: float = 300.0):
    """``ray.get(make_call())``, retried while the actor is restarting (Ray answers ``ActorUnavailableError`` or
    ``ActorDiedError`` until the new process is up) for up to ``timeout_s``; then the last error propagates."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(make_call())
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (the newest is written before any is deleted)."""
    for old in list_complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the rows after ``step`` (logged before a crash, redone after the resume) so each step appears once."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:  # a line cut short by the crash
            continue
    atomic_write_bytes(path, "".join(x + "\n" for x in keep).encode())
