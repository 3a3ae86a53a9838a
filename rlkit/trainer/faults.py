"""What the driver does when things go wrong: resume points, learner failures, checkpoint pruning.

The rules (issue "reliability"): a step either completes with every sample or fails loudly; a dead rollout worker is
restarted by Ray and its shard retried with the current weights (:func:`rlkit.trainer.evaluate.generate`); a dead or
failing learner ends the job with the last complete checkpoint intact and says how to resume.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from rlkit.utils.checkpoint import atomic_write_bytes, list_complete_checkpoints


class TrainingError(RuntimeError):
    """A job that cannot go on; the message says why, which checkpoint is intact and how to resume."""


class Stop(BaseException):
    """Leave the run now because of a signal (see :class:`StopSignals`); ``checkpoint``: the training checkpoint
    written for it, if any. A ``BaseException`` so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int, checkpoint: Path | None = None):
        super().__init__(signum)
        self.signum, self.checkpoint = signum, checkpoint


class StopSignals:
    """SIGTERM (what schedulers send before they kill a job) and SIGINT (Ctrl-C) for the online driver.

    In the training loop the first signal only sets :attr:`received`: the driver finishes the step, writes a full
    training checkpoint (the one ``--resume`` reads) and raises :class:`Stop`. Anywhere else (set-up, the final
    evaluation), or on a second signal, the handler raises :class:`Stop` at once: the step or the checkpoint being
    written is abandoned (checkpoints are written atomically, so none is left half-written). :meth:`exit` prints one
    line, shuts Ray down and exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None  # the first signal
        self.in_loop = False
        self.step = 0  # training steps completed
        self._old: dict = {}

    def install(self) -> StopSignals:
        """Take over both signals (main thread only). Call again after ``ray.init``, which installs its own SIGTERM
        handler (a stack dump and exit)."""
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                old = signal.signal(sig, self._handle)
                self._old.setdefault(sig, old)
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        first = self.received is None
        self.received = self.received or signum
        if first and self.in_loop:
            return  # the loop checkpoints after this step
        raise Stop(signum)

    def exit(self, stop: BaseException, out: Path) -> NoReturn:
        """Report the stop on stderr, shut Ray down (if this process started or joined it) and exit."""
        for sig in self.SIGNALS:  # nothing is being written any more: further signals change nothing
            signal.signal(sig, signal.SIG_IGN)
        self._old.clear()
        stop_signum: int = getattr(stop, "signum", signal.SIGTERM)  # a Stop's signal; SIGTERM for other errors
        signum = self.received or stop_signum
        name = signal.Signals(signum).name
        resume = ", resume with --resume"
        if isinstance(stop, Stop) and stop.checkpoint is not None:
            line = f"received {name} at step {self.step}: checkpoint -> {stop.checkpoint}{resume}"
        else:
            if isinstance(stop, TrainingError):  # the signal reached the learner too (sent to the process group)
                where = f"at step {self.step}, and the learner stopped before the checkpoint was written ({stop})"
            elif self.in_loop:
                where = f"again at step {self.step}: stopped without a new checkpoint"
            elif self.step:
                where = f"after step {self.step} (final evaluation and save): stopped"
            else:
                where = "before the first training step: stopped"
            found = list_complete_checkpoints(out / "checkpoints")
            line = f"received {name} {where}; last complete checkpoint: " + (
                f"{found[-1]}{resume}" if found else "none"
            )
        print(f"rlkit: {line}", file=sys.stderr, flush=True)
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        raise SystemExit(128 + signum)


def find_resume_point(recipe, out: Path, console) -> Path | None:
    """The newest complete and intact training checkpoint when ``recipe.resume``: ``COMPLETE`` marker,
    ``trainer_state.json``, and files that pass :func:`rlkit.utils.checkpoint.checkpoint_problem` (sizes as saved,
    safetensors headers consistent with the file sizes). A damaged newer one is skipped with a printed line naming
    the bad file; if every checkpoint is damaged, a :class:`TrainingError`. Half-written ``.tmp-*`` directories are
    never considered. The recipe is then checked against the one the checkpoint was trained with
    (:func:`check_resume_recipe`)."""
    if not recipe.resume:
        return None
    from rlkit.utils.checkpoint import checkpoint_problem
    from rlkit.utils.train_state import read_state

    found = [p for p in list_complete_checkpoints(out / "checkpoints") if (p / "trainer_state.json").is_file()]
    if not found:
        console.print(f"resume: no complete checkpoint in {out / 'checkpoints'}; starting from the beginning")
        return None
    bad = []
    for ck in reversed(found):
        problem = checkpoint_problem(ck)
        if problem is None:
            check_resume_recipe(recipe, read_state(ck)["driver"].get("recipe"), ck, console)
            return ck
        console.print(f"resume: skipping {ck}: {problem}")
        bad.append(f"{ck.name} ({problem})")
    raise TrainingError(
        f"resume: no intact checkpoint in {out / 'checkpoints'}: {'; '.join(bad)}. Delete them to "
        "start from the beginning, or run without --resume into a new output_dir"
    )


#: what a resumed run must share with the run that wrote the checkpoint: changing any of these silently makes a
#: different run from the saved state (its data position, optimizer, controller states or weights), or is silently
#: overridden by it (the saved optimizer's learning rate). Everything else (``<algo>.steps``, logging, checkpoint,
#: eval, ray, rollout engine settings, ...) may change on resume.
RESUME_KEYS = (
    "algorithm",
    "seed",
    "model",
    "data.source",
    "data.params",
    "data.prompt_column",
    "data.answer_column",
    "data.max_train_prompts",
    "data.chat_template",
    "sft",
    "rehearsal",
    "regularizers",
    "{algo}.prompts_per_step",
    "{algo}.group_size",
    "{algo}.learning_rate",
    "{algo}.weight_decay",
)


def resume_recipe(recipe) -> dict:
    """The recipe values of :data:`RESUME_KEYS` (JSON; regularizers resolved to their full configs, so a preset
    name and the same spec written out compare equal); stored in each training checkpoint's driver state."""
    from rlkit.regularizers import build_regularizers

    dumped = recipe.model_dump(mode="json")
    dumped["sft"] = (
        {k: v for k, v in dumped["sft"].items() if k != "cache_dir"} if recipe.sft.enabled else {"enabled": False}
    )  # without SFT its settings change nothing
    dumped["regularizers"] = [r.cfg.model_dump(mode="json") for r in build_regularizers(recipe.regularizers)]
    values = {}
    for key in RESUME_KEYS:
        key = key.format(algo=recipe.algorithm)
        node = dumped
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[key] = node
    return values


def _leaves(value, path: str) -> dict:
    if isinstance(value, dict):
        return {k: v for key in value for k, v in _leaves(value[key], f"{path}.{key}").items()} or {path: {}}
    if isinstance(value, list):
        return {k: v for i, x in enumerate(value) for k, v in _leaves(x, f"{path}[{i}]").items()} or {path: []}
    return {path: value}


def check_resume_recipe(recipe, saved: dict | None, ck: Path, console=None) -> list[str]:
    """Refuse to resume ``ck`` when :data:`RESUME_KEYS` values differ from the ones it was saved with: a
    :class:`ConfigError` listing every changed key (its leaf, e.g. ``regularizers[0].coef``), the first with both
    values. With ``allow_recipe_change`` (``--allow-recipe-change``) the changes are printed and allowed. Returns the
    changed keys. Checkpoints written before the recipe was stored (``saved`` None) are not checked."""
    if saved is None:
        return []
    from rlkit._config import ConfigError

    now = resume_recipe(recipe)
    if saved.get("algorithm") != now["algorithm"]:
        saved, now = {"algorithm": saved.get("algorithm")}, {"algorithm": now["algorithm"]}
    old = {k: v for key in saved for k, v in _leaves(saved[key], key).items()}
    new = {k: v for key in now for k, v in _leaves(now[key], key).items()}
    changed = [k for k in {**old, **new} if old.get(k, "<unset>") != new.get(k, "<unset>")]
    if not changed:
        return []
    key = changed[0]
    listed = ", ".join(changed[1:10]) + (f", ... ({len(changed) - 10} more)" if len(changed) > 10 else "")
    more = f" (also changed: {listed})" if len(changed) > 1 else ""
    if getattr(recipe, "allow_recipe_change", False):
        if console is not None:
            console.print(
                f"resume: recipe changed since {ck.name} (allowed by --allow-recipe-change): "
                + ", ".join(f"{k} {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in changed)
            )
        return changed
    raise ConfigError(
        key,
        f"is {new.get(key, '<unset>')!r} but {ck} was trained with "
        f"{old.get(key, '<unset>')!r}{more}; --resume continues a run only with the same "
        f"values (restore them, start a new output_dir, or pass --allow-recipe-change)",
    )


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
    raise TrainingError(
        f"step {step + 1}: {cause.strip()}. Last complete checkpoint: {last_checkpoint(out)}; "
        "continue with `rlkit train <recipe> --resume`"
    ) from None


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
