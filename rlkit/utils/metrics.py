"""Training metrics: the recipe's backends (``metrics.jsonl``, TensorBoard, wandb, MLflow: :mod:`rlkit.utils.loggers`)
+ a live ``rich`` progress bar (or compact lines when not a TTY)."""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rlkit.utils.loggers import Backend, BackendContext, jsonl_record, make_backend

__all__ = ["MetricsLogger", "match_progress_key", "metrics_logger", "read_metrics", "to_float"]

RESERVED = ("step", "time")


def to_float(value: Any, name: str = "value") -> float:
    """Convert a Python/NumPy/torch scalar (a 1-element tensor or array included) to a Python ``float``.

    Raises ``TypeError`` for anything else (strings, multi-element tensors), naming ``name``.
    """
    if hasattr(value, "numel") and callable(value.numel):  # torch.Tensor, without importing torch
        if value.numel() != 1:
            raise TypeError(f"metric {name!r}: tensor with {value.numel()} elements is not a scalar")
        return float(value.detach().float().item())
    if hasattr(value, "size") and hasattr(value, "item") and not isinstance(value, numbers.Number):
        if value.size != 1:  # numpy array
            raise TypeError(f"metric {name!r}: array with {value.size} elements is not a scalar")
        value = value.item()
    if isinstance(value, numbers.Real):  # bool, int, float, numpy scalars
        return float(value)
    raise TypeError(f"metric {name!r}: cannot log {type(value).__name__} as a float")


def match_progress_key(key: str, names: Iterable[str]) -> str | None:
    """The metric name shown for progress key ``key``, or None.

    Rule: a metric named exactly ``key`` matches; otherwise drop one trailing ``/mean`` from a metric name, then
    it matches when its last ``/``-component equals ``key``. So for ``reward``: ``reward``, ``reward/mean``,
    ``train/reward`` and ``train/reward/mean`` match; ``reward/std``, ``rewards`` and ``reward_model/loss`` do not.
    Among several matches the shortest name wins (an exact ``reward`` beats ``reward/mean``), ties by order of
    ``names``.
    """
    best = None
    for name in names:
        base = name[: -len("/mean")] if name.endswith("/mean") else name
        if (name == key or base.rsplit("/", 1)[-1] == key) and (best is None or len(name) < len(best)):
            best = name
    return best


def _fmt(v: float) -> str:
    return f"{v:.4g}"  # nan / inf print as such


class MetricsLogger:
    """Log scalar metrics per step to the selected backends and the console.

    Backends (:mod:`rlkit.utils.loggers`): ``backends`` names (``jsonl``, ``tensorboard``, ``wandb``, ``mlflow`` or a
    registered one) or :class:`~rlkit.utils.loggers.Backend` objects, in order; ``None`` (the default) means
    ``jsonl`` plus ``tensorboard`` unless ``tensorboard=False`` (``tensorboard`` is read only then).
    ``settings[name]`` are a backend's options (``logging.wandb``, ``logging.mlflow``), ``config`` the run's
    configuration for the trackers that record it. :func:`metrics_logger` builds one from a recipe's ``logging``.

    ``log(step, metrics)`` sends every backend the same floats and returns the ``metrics.jsonl`` record,
    ``{"step": int, "time": float, **metrics}``, where ``time`` is wall-clock seconds since this logger was created.
    Values are converted to Python floats (tensors, NumPy scalars, ints, bools); non-scalars raise ``TypeError``; the
    names ``step`` and ``time`` are reserved (``ValueError``). **Non-finite values (NaN, +-inf) are written to the
    JSONL file as JSON ``null``** so it stays strict JSON (:func:`read_metrics` gives them back as ``float('nan')``);
    the other backends get the raw value. The file is opened in append mode, so a resumed run continues it.

    Console: if ``enabled_progress`` and the console is a terminal, a live ``rich`` progress bar shows the step (of
    ``progress_total`` if given) and the ``progress_keys`` present in the current call (matching rule:
    :func:`match_progress_key`). Otherwise (CI, piped stdout) one compact line is printed on the first call, then
    whenever ``step`` has advanced by ``print_every`` since the last printed line, and at ``step >= progress_total``.
    ``enabled_progress=False`` prints nothing. ``console`` defaults to a new ``rich.console.Console()``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        tensorboard: bool = True,
        progress_total: int | None = None,
        progress_keys: tuple[str, ...] = ("reward", "kl", "entropy"),
        enabled_progress: bool = True,
        print_every: int = 10,
        console=None,
        backends: Sequence[str | Backend] | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        if print_every < 1:
            raise ValueError(f"print_every must be >= 1, got {print_every}")
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / "metrics.jsonl"
        self.progress_total = progress_total
        self.progress_keys = tuple(progress_keys)
        self.enabled_progress = enabled_progress
        self.print_every = print_every
        self._start = time.monotonic()
        self._elapsed = 0.0
        self._console = console
        self._progress: Any = None  # a rich Progress once the first line is shown on a terminal
        self._task: Any = None
        self._last_printed: int | None = None
        self._closed = False
        if backends is None:
            backends = ["jsonl", *(["tensorboard"] if tensorboard else [])]
        self.backends: list[Backend] = []
        try:
            for b in backends:
                ctx = BackendContext(
                    self.output_dir,
                    dict((settings or {}).get(b, {})) if isinstance(b, str) else {},
                    config,
                    clock=lambda: self._elapsed,
                )
                self.backends.append(make_backend(b, ctx) if isinstance(b, str) else b)
        except BaseException:
            self._close_backends()  # those already open (a file, a tracker run) are not left behind
            raise

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console()
        return self._console

    def _summary(self, metrics: Mapping[str, float]) -> str:
        parts = []
        for key in self.progress_keys:
            name = match_progress_key(key, metrics.keys())
            if name is not None:
                parts.append(f"{key}={_fmt(metrics[name])}")
        return " ".join(parts)

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict:
        """Record ``metrics`` for ``step``; returns the record written (NaN as None)."""
        if self._closed:
            raise RuntimeError("MetricsLogger is closed")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        step = int(step)
        values: dict[str, float] = {}
        for name, value in metrics.items():
            if not isinstance(name, str):
                raise TypeError(f"metric names must be str, got {name!r}")
            if name in RESERVED:
                raise ValueError(f"metric name {name!r} is reserved")
            values[name] = to_float(value, name)
        self._elapsed = elapsed = time.monotonic() - self._start
        for backend in self.backends:
            backend.log(step, values)
        if self.enabled_progress:
            self._show(step, values, elapsed)
        return jsonl_record(step, elapsed, values)

    def _show(self, step: int, values: Mapping[str, float], elapsed: float) -> None:
        summary = self._summary(values)
        if self.console.is_terminal:
            if self._progress is None:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    ProgressColumn,
                    TextColumn,
                    TimeElapsedColumn,
                )

                columns: list[ProgressColumn] = [TextColumn("[bold]step {task.completed}")]
                if self.progress_total:
                    columns += [BarColumn(), MofNCompleteColumn()]
                columns += [TimeElapsedColumn(), TextColumn("{task.fields[summary]}")]
                self._progress = Progress(*columns, console=self.console, transient=False)
                self._progress.start()
                self._task = self._progress.add_task("train", total=self.progress_total, summary="")
            self._progress.update(self._task, completed=step, summary=summary)
            return
        done = self.progress_total is not None and step >= self.progress_total
        if self._last_printed is None or step - self._last_printed >= self.print_every or done:
            total = f"/{self.progress_total}" if self.progress_total is not None else ""
            parts = [f"step {step}{total}", summary, f"{elapsed:.1f}s"]
            line = " | ".join(p for p in parts if p)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self._last_printed = step

    def close(self) -> None:
        """Stop the progress bar and close every backend (each one even if another fails; the first error is
        raised after). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            self._progress.stop()
        self._close_backends()

    def _close_backends(self) -> None:
        error = None
        for backend in self.backends:
            try:
                backend.close()
            except Exception as err:  # noqa: BLE001 - the others are closed first
                error = error or err
        if error is not None:
            raise error

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def metrics_logger(
    output_dir: str | os.PathLike, logging, config: Mapping[str, Any] | None = None, **kwargs
) -> MetricsLogger:
    """A :class:`MetricsLogger` for a recipe's ``logging`` section: its selected backends
    (``logging.selected_backends()``), their ``logging.wandb`` / ``logging.mlflow`` settings and ``print_every``;
    ``kwargs`` (``progress_total``, ``progress_keys``, ...) go to :class:`MetricsLogger`."""
    settings = {"wandb": logging.wandb, "mlflow": logging.mlflow}
    kwargs.setdefault("print_every", logging.print_every)
    return MetricsLogger(output_dir, backends=logging.selected_backends(), settings=settings, config=config, **kwargs)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Read a ``metrics.jsonl`` file (or a directory containing one) into a list of dicts, in file order.

    JSON ``null`` values (non-finite metrics) come back as ``float('nan')``. A malformed *last* line (a run killed
    mid-write) is skipped; a malformed line elsewhere raises ``ValueError`` with its line number.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines):
                break
            raise ValueError(f"{path}:{i}: not valid JSON ({err})") from err
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        rows.append({k: (math.nan if v is None else v) for k, v in obj.items()})
    return rows
