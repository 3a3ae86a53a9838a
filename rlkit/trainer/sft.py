"""SFT warm start with TRL's ``SFTTrainer`` (prompt-completion data, loss on the completion only).

Progress is rlkit's own (:class:`SFTProgress`), in the style of the GRPO/DPO loop's :class:`~rlkit.utils.metrics.
MetricsLogger`: a live ``rich`` bar on a terminal, else one compact line every N steps (step/total, loss, learning
rate, elapsed, ETA). TRL/transformers' own log-dict printing and tqdm bar are off. Every logged value (loss, grad
norm, learning rate, entropy, token accuracy) is kept in ``sft_metrics.jsonl`` inside the SFT checkpoint directory.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlkit._extras import require
from rlkit.config import Recipe

if TYPE_CHECKING:
    from rich.progress import Progress

#: about this many progress lines (and ``sft_metrics.jsonl`` rows) per warm start, unless ``logging.print_every``
#: asks for fewer steps between lines
SFT_LINES = 20


def sft_log_every(max_steps: int, print_every: int) -> int:
    """Steps between SFT progress lines (TRL's ``logging_steps``): ``print_every``, or more so that a long warm start
    prints about :data:`SFT_LINES` lines."""
    return max(1, print_every, math.ceil(max_steps / SFT_LINES))


def run_sft(recipe: Recipe, path: Path, seed: int, console=None) -> str:
    import torch
    from rich.console import Console

    from rlkit.models.loading import load_model_and_tokenizer
    from rlkit.utils.checkpoint import save_hf_checkpoint
    from rlkit.workers.common import quiet_libraries

    trl = require("trl", why="sft.enabled (the SFT warm start)")
    quiet_libraries()  # no per-dataset-map or per-shard progress bars: the warm start has its own progress
    console = console or Console(soft_wrap=True)
    torch.manual_seed(seed)
    m = recipe.model
    model, tokenizer = load_model_and_tokenizer(
        m.name_or_path, dtype=m.dtype, seed=seed, attn_implementation=m.attn_implementation
    )
    dataset = _sft_dataset(recipe, seed)
    s = recipe.sft
    every = sft_log_every(s.max_steps, recipe.logging.print_every)
    with tempfile.TemporaryDirectory() as tmp:
        args = trl.SFTConfig(
            output_dir=tmp,
            max_steps=s.max_steps,
            per_device_train_batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, s.max_steps // 20),
            logging_steps=every,
            logging_first_step=True,
            save_strategy="no",
            report_to=[],
            seed=seed,
            use_cpu=True,
            bf16=False,
            fp16=False,
            completion_only_loss=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
            log_level="error",
            log_level_replica="error",
            max_length=128,
            **no_checkpointing(trl.SFTConfig),
        )
        trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        progress = SFTProgress(s.max_steps, console)
        quiet_trainer(trainer, progress)
        try:
            trainer.train()
        finally:
            progress.close()
    return str(save_hf_checkpoint(trainer.model, tokenizer, path, extra_files={"sft_metrics.jsonl": progress.jsonl()}))


def quiet_trainer(trainer, progress) -> None:
    """Replace a ``transformers.Trainer``'s printed log dicts (``PrinterCallback``) and tqdm bar
    (``ProgressCallback``) by ``progress`` (a :class:`SFTProgress`). Callbacks only observe: training is unchanged."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    # a TrainerCallback (every event a no-op) with SFTProgress's handlers; made here: importing this module
    # (`rlkit check` does) must not import transformers
    trainer.add_callback(type("SFTProgressCallback", (_Handlers, TrainerCallback), {"progress": progress})())


def _fmt(v: float) -> str:
    return f"{v:.4g}"  # as MetricsLogger prints values


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class SFTProgress:
    """rlkit's progress for the SFT warm start, fed by TRL's log events (``logs`` dicts, every ``logging_steps``).

    On a terminal: a live ``rich`` bar (step/total, elapsed, remaining, loss and learning rate). Otherwise (CI,
    piped stdout) one line per logged step, as the GRPO loop prints them::

        sft step 75/1500 | loss=1.815 lr=0.002203 | 12.3s | ETA 3m41s

    and a closing ``sft done`` line with TRL's mean training loss. Every log event is kept as one row (``step``,
    ``time``, TRL's numeric values) for :meth:`jsonl`."""

    def __init__(self, total: int, console):
        self.total, self.console = total, console
        self.rows: list[dict] = []
        self._start: float | None = None
        self._bar: Progress | None = None
        self._task: Any = None  # rich's TaskID of the bar, set with it
        self._loss: float | None = None
        self._lr: float | None = None
        self._first: tuple[int, float] | None = None  # (step, elapsed) at the first step end: the ETA's origin

    # -- events (called through quiet_trainer's TrainerCallback)
    def train_begin(self) -> None:
        self._start = time.monotonic()
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]sft step {task.completed}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[summary]}"),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("sft", total=self.total, summary="")

    def step_end(self, step: int) -> None:
        if self._first is None:
            self._first = (step, self.elapsed())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, summary=self._summary())

    def log(self, step: int, logs: dict) -> None:
        elapsed = self.elapsed()
        row: dict[str, float | None] = {"step": int(step), "time": round(elapsed, 6)}
        for k, v in logs.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "total_flos":
                row[k] = float(v) if math.isfinite(v) else None
        self.rows.append(row)
        if "loss" in logs:
            self._loss, self._lr = logs.get("loss"), logs.get("learning_rate")
            if self._bar is not None:
                self._bar.update(self._task, completed=step, summary=self._summary())
                return
            parts = [f"sft step {step}/{self.total}", self._summary(), f"{elapsed:.1f}s"]
            eta = self.eta(step)
            if eta is not None:
                parts.append(f"ETA {_duration(eta)}")
            self._print(" | ".join(p for p in parts if p))
        elif "train_loss" in logs:  # TRL's last event: the mean loss over the run
            self.close()
            self._print(f"sft done: {step} steps in {_duration(elapsed)} | mean loss={_fmt(logs['train_loss'])}")

    # --
    def elapsed(self) -> float:
        return time.monotonic() - self._start if self._start is not None else 0.0

    def eta(self, step: int) -> float | None:
        """Seconds left at the rate since the first step (which also pays the start-up: data loading, warm-up)."""
        if self._first is None or step >= self.total or step <= self._first[0]:
            return None
        s0, t0 = self._first
        return (self.elapsed() - t0) / (step - s0) * (self.total - step)

    def _summary(self) -> str:
        parts: list[str] = []
        if self._loss is not None:
            parts.append(f"loss={_fmt(self._loss)}")
        if self._lr is not None:
            parts.append(f"lr={_fmt(self._lr)}")
        return " ".join(parts)

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def jsonl(self) -> str:
        """The log rows as JSON lines (non-finite values as ``null``)."""
        return "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.rows)


class _Handlers:
    """TrainerCallback event methods that forward to ``self.progress`` (an :class:`SFTProgress`)."""

    progress: SFTProgress

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress.train_begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.step_end(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            self.progress.log(state.global_step, logs)


def no_checkpointing(config_cls) -> dict:
    """Turn off TRL's default activation (gradient) checkpointing, which only recomputes the forward of a model
    this small: ``activation_checkpointing=False`` where the installed transformers has it (5.2x; its old name,
    ``gradient_checkpointing``, prints a deprecation warning there), else ``gradient_checkpointing=False``."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_cls)}
    return (
        {"activation_checkpointing": False}
        if "activation_checkpointing" in names
        else {"gradient_checkpointing": False}
    )


def require_sft_data(recipe: Recipe) -> None:
    """Your own ``data.source`` needs your own ``sft.data`` (the warm start trains on completions)."""
    d = recipe.data
    if d.source != "arithmetic" and not recipe.sft.data:
        from rlkit._config import ConfigError

        raise ConfigError(
            "sft.data",
            f"data.source is {d.source!r}: give SFT data (a file with "
            f"'{d.prompt_column}' and '{recipe.sft.completion_column}' columns), or set "
            "sft.enabled=false and point model.name_or_path at an SFT checkpoint",
        )


def _sft_dataset(recipe: Recipe, seed: int):
    d = recipe.data
    if d.source == "arithmetic":
        from rlkit.data.arithmetic import make_sft_dataset

        return make_sft_dataset(
            n=recipe.sft.num_examples,
            seed=seed,
            label_noise=recipe.sft.label_noise,
            noise=recipe.sft.noise,
            split_seed=recipe.seed,
            **d.params,
        )
    require_sft_data(recipe)
    from rlkit.data.loading import load_prompt_dataset

    try:
        ds = load_prompt_dataset(
            recipe.sft.data, prompt_column=d.prompt_column, answer_column=recipe.sft.completion_column
        )
    except (ValueError, FileNotFoundError, KeyError) as err:
        from rlkit._config import ConfigError

        raise ConfigError("sft.data", str(err.args[0] if err.args else err)) from None
    ds = ds.rename_column("answer", "completion").select_columns(["prompt", "completion"])
    if recipe.sft.num_examples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(recipe.sft.num_examples))
    return ds
