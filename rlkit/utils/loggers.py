"""Metric backends behind one small interface: where :class:`rlkit.utils.metrics.MetricsLogger` sends each step.

A backend has ``log(step, metrics)`` (``metrics``: name -> Python float, NaN and inf as they are) and ``close()``.
Built-in: ``jsonl`` (``metrics.jsonl``, strict JSON, what plots, reports and resume read), ``tensorboard``
(``tensorboard/``), ``wandb`` and ``mlflow``; the recipe picks them with ``logging.backends``. Another one is a
factory registered under a name with :func:`register_backend`. A backend's optional package is imported when the
backend is built, never when this module is: a missing one is :class:`rlkit._extras.MissingExtraError`, one line
naming the pip extra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from rlkit._extras import require

__all__ = [
    "Backend",
    "BackendContext",
    "JsonlBackend",
    "MLflowBackend",
    "MLFLOW_KEYS",
    "TensorBoardBackend",
    "WANDB_KEYS",
    "WandbBackend",
    "available_backends",
    "jsonl_record",
    "make_backend",
    "register_backend",
]

#: the keys ``logging.wandb`` accepts (passed to ``wandb.init``)
WANDB_KEYS = ("project", "entity", "name", "group", "tags", "notes", "mode", "dir")
#: the keys ``logging.mlflow`` accepts
MLFLOW_KEYS = ("tracking_uri", "experiment", "run_name", "tags")


@runtime_checkable
class Backend(Protocol):
    """Where metrics go: ``log`` is called once per :meth:`MetricsLogger.log` with validated floats; ``close`` once."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


@dataclass
class BackendContext:
    """What a backend factory gets: the run directory, its ``logging.<name>`` settings, the run's configuration
    (the recipe as a dict, for trackers that record it; may be None) and ``clock()``, the seconds since the logger
    started, the same value for every backend within one ``log`` call."""

    output_dir: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] | None = None
    clock: Callable[[], float] = field(default_factory=lambda: _Stopwatch())


class _Stopwatch:
    def __init__(self):
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start


def jsonl_record(step: int, elapsed: float, metrics: Mapping[str, float]) -> dict:
    """One ``metrics.jsonl`` row: ``{"step", "time", **metrics}`` with non-finite values as ``None``."""
    record: dict[str, Any] = {"step": step, "time": round(elapsed, 6)}
    record.update({k: (v if math.isfinite(v) else None) for k, v in metrics.items()})
    return record


class JsonlBackend:
    """Append one strict-JSON object per call to ``path`` (opened in append mode, so a resumed run continues it),
    flushed at once so a crash loses at most the line being written."""

    def __init__(self, path: str | os.PathLike, clock: Callable[[], float] | None = None):
        self.path = Path(path)
        self.clock = clock or _Stopwatch()
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._file.write(json.dumps(jsonl_record(step, self.clock(), metrics), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardBackend:
    """Scalars in TensorBoard event files under ``log_dir`` (NaN and inf as they are)."""

    def __init__(self, log_dir: str | os.PathLike):
        require("tensorboard", why="logging.backends: tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self._writer.close()


class WandbBackend:
    """A Weights & Biases run. ``settings`` go to ``wandb.init`` (keys :data:`WANDB_KEYS`) over these defaults:
    ``mode="offline"`` (written under ``dir``; ``wandb sync`` uploads it later), ``project="rlkit"``,
    ``dir=output_dir``, ``name=output_dir``'s last component. Its own run object, never the global ``wandb.run``,
    so several loggers in one process do not mix."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        settings: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        wandb = require("wandb", why="logging.backends: wandb")
        out = Path(output_dir)
        kw = {"project": "rlkit", "mode": "offline", "dir": str(out), "name": out.resolve().name, **(settings or {})}
        Path(kw["dir"]).mkdir(parents=True, exist_ok=True)
        # console="off": wandb leaves stdout alone (rich's progress bar owns it); reinit: one run per logger
        self.run = wandb.init(
            config=dict(config or {}), reinit="create_new", settings=wandb.Settings(console="off", silent=True), **kw
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Raise the ``logging`` level of ``names`` to WARNING for the block (their INFO lines would interleave with
    the run's progress), restoring it after."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _mlflow_key(name: str) -> str:
    """MLflow accepts letters, digits, ``_ - . / :`` and spaces in a metric name: anything else (``pass@1``)
    becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-./: " else "_" for c in name)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:500]  # MLflow's oldest servers cap a value at 500 characters
    return flat


class MLflowBackend:
    """An MLflow run through its own ``MlflowClient`` (no global active run). ``settings`` (keys
    :data:`MLFLOW_KEYS`): ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<output_dir>/mlflow.db``:
    MLflow 3 refuses its old ``./mlruns`` file store; a ``http(s)://`` server needs no database package),
    ``experiment`` (default ``rlkit``, created if missing), ``run_name`` (default ``output_dir``'s last component),
    ``tags``. ``config`` is recorded as the run's parameters, flattened to dotted keys."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        settings: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        require("mlflow", why="logging.backends: mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        out, s = Path(output_dir).resolve(), dict(settings or {})
        uri = s.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out / 'mlflow.db'}"
        with _quiet_loggers("mlflow.store.db.utils", "alembic"):  # no "Creating initial MLflow database tables"
            self.client = MlflowClient(tracking_uri=uri)
        experiment = self._experiment_id(s.get("experiment") or "rlkit")
        tags = {str(k): str(v) for k, v in (s.get("tags") or {}).items()}
        self.run_id = self.client.create_run(experiment, run_name=s.get("run_name") or out.name, tags=tags).info.run_id
        params = [Param(k, v) for k, v in _flatten(config or {}).items()]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # created meanwhile by a parallel run (rlkit ablate --parallel)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_mlflow_key(k), v, now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


Factory = Callable[[BackendContext], Backend]

_REGISTRY: dict[str, Factory] = {
    "jsonl": lambda ctx: JsonlBackend(ctx.output_dir / "metrics.jsonl", clock=ctx.clock),
    "tensorboard": lambda ctx: TensorBoardBackend(ctx.output_dir / "tensorboard"),
    "wandb": lambda ctx: WandbBackend(ctx.output_dir, ctx.settings, ctx.config),
    "mlflow": lambda ctx: MLflowBackend(ctx.output_dir, ctx.settings, ctx.config),
}


def register_backend(name: str, factory: Factory) -> None:
    """Make ``name`` selectable in ``logging.backends``: ``factory(ctx: BackendContext)`` returns a :class:`Backend`
    (``ctx.settings`` is empty for a name without a ``logging.<name>`` section). Register before the recipe is
    loaded: the recipe's ``logging.backends`` is checked against this registry."""
    if not name or not name.isidentifier():
        raise ValueError(f"backend name must be an identifier, got {name!r}")
    _REGISTRY[name] = factory


def available_backends() -> list[str]:
    """The names ``logging.backends`` accepts, built-in first."""
    return list(_REGISTRY)


def make_backend(name: str, ctx: BackendContext) -> Backend:
    """The backend registered as ``name``, built for ``ctx``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown logging backend {name!r} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name](ctx)
