"""Offline DPO / f-DPO driver (``algorithm: dpo``): in one process, no Ray.

SFT warm start (:func:`.setup.prepare_initial_models`) -> policy + frozen reference -> reference log-probs (computed
once before training, or live per batch) -> AdamW on :func:`rlkit.objectives.dpo_loss` -> held-out preference
metrics and the task's pass@k / greedy accuracy before and after -> ``final/`` checkpoint and ``summary.json``.
Dropout stays off (both models in eval mode), as is usual for DPO, so the two reference modes agree.

SIGTERM/SIGINT (:class:`rlkit.trainer.faults.StopSignals`, as in the online loop): during training the step in
progress is finished and logged, the policy weights are saved to ``<output_dir>/stopped_at_step_<N>/`` and the process
exits with 128 + the signal (143, 130). DPO has no mid-run checkpoints or ``--resume`` (no optimizer state is saved):
the stopped weights are a model directory (``rlkit eval`` reads it), not a resume point.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NoReturn

import torch

from rlkit._config import ConfigError
from rlkit.config import Recipe
from rlkit.utils.optim import adamw


def sequence_logps(model, pairs: list[tuple], which: int, device, pad_id: int) -> torch.Tensor:
    """``log pi(y | x)`` summed over the response tokens (prompt tokens excluded), one value per pair;
    ``which``: 1 = chosen, 2 = rejected."""
    from rlkit.models.forward import collate, completion_logits, token_logprobs

    batch = collate([p[0] for p in pairs], [p[which] for p in pairs], pad_id)
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    lp = token_logprobs(completion_logits(model, batch), batch["completion_ids"])
    return (lp * batch["completion_mask"]).sum(-1)


def pair_logps(model, pairs: list[tuple], device, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return sequence_logps(model, pairs, 1, device, pad_id), sequence_logps(model, pairs, 2, device, pad_id)


@torch.no_grad()
def precompute_logps(model, pairs: list[tuple], device, pad_id: int, batch_size: int = 64):
    """Chosen and rejected sequence log-probs of every pair, in one pass over the data (CPU tensors ``[N]``)."""
    out = [pair_logps(model, pairs[i : i + batch_size], device, pad_id) for i in range(0, len(pairs), batch_size)]
    return torch.cat([c for c, _ in out]).cpu(), torch.cat([r for _, r in out]).cpu()


def dpo_batch_loss(policy, ref_c: torch.Tensor, ref_r: torch.Tensor, pairs: list[tuple], cfg, device, pad_id: int):
    """f-DPO loss of a batch (Rafailov et al. 2023, arXiv 2305.18290; Wang et al. 2023, arXiv 2309.16240):

        L = mean_i  -log sigmoid( beta [ f'(pi(y_w|x) / ref(y_w|x)) - f'(pi(y_l|x) / ref(y_l|x)) ] )

    with sequence probabilities over response tokens; ``f'(u) = log u`` (reverse KL) is standard DPO. cDPO
    (``label_smoothing``), IPO and hinge as in :func:`rlkit.objectives.fdpo_loss`. Returns ``(loss, metrics)``."""
    from rlkit.objectives import dpo_loss

    pc, pr = pair_logps(policy, pairs, device, pad_id)
    loss, metrics = dpo_loss(
        pc,
        pr,
        ref_c.to(pc),
        ref_r.to(pr),
        beta=cfg.beta,
        divergence=cfg.divergence,
        alpha=cfg.alpha,
        label_smoothing=cfg.label_smoothing,
        loss_type=cfg.loss_type,
    )
    metrics.update(
        {
            "loss": metrics["loss/dpo"],
            "logps/chosen": float(pc.detach().mean()),
            "logps/rejected": float(pr.detach().mean()),
        }
    )
    return loss, metrics, (pc.detach(), pr.detach())


@torch.no_grad()
def preference_eval(policy, pairs, ref_c, ref_r, cfg, device, pad_id: int, batch_size: int = 64) -> dict:
    """Held-out DPO metrics: ``pref/accuracy`` (implicit reward of chosen > rejected), ``pref/logp_accuracy``
    (the policy itself gives chosen the higher sequence log-prob), loss, margin, ECE."""
    from rlkit.objectives import dpo_loss

    pc, pr = precompute_logps(policy, pairs, device, pad_id, batch_size)
    loss, m = dpo_loss(
        pc,
        pr,
        ref_c,
        ref_r,
        beta=cfg.beta,
        divergence=cfg.divergence,
        alpha=cfg.alpha,
        label_smoothing=cfg.label_smoothing,
        loss_type=cfg.loss_type,
    )
    return {
        "pref/accuracy": m["rewards/accuracy"],
        "pref/logp_accuracy": float((pc > pr).float().mean()),
        "pref/loss": float(loss),
        "pref/margin": m["rewards/margin"],
        "pref/ece": m["rewards/ece"],
        "pref/num_pairs": len(pairs),
    }


@torch.no_grad()
def task_eval(model, tokenizer, recipe: Recipe, rows: list[dict], prompt_ids: list[list[int]], seed: int) -> dict:
    """pass@k (unbiased, ``eval.n_samples`` per prompt), greedy accuracy and mean reward on held-out task prompts,
    generated in-process (``transformers``); a sample is correct when the first reward component gives full marks."""
    from reward_models import CompositeReward

    from rlkit.rollout.base import SamplingParams
    from rlkit.rollout.hf import TransformersEngine
    from rlkit.utils.evaluation import correctness, summarize_correctness

    ev, ro = recipe.eval, recipe.rollout
    engine = TransformersEngine(model, tokenizer, batch_size=ro.batch_size, sampler=ro.sampler)
    reward = CompositeReward([r.model_dump(exclude_defaults=True) for r in recipe.rewards])
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]

    def score(comps, n):
        res = reward.compute(
            [p for p in prompts for _ in range(n)], [c.text for c in comps], [a for a in answers for _ in range(n)]
        )
        return correctness(res.components), res.totals

    comps = engine.generate(
        prompt_ids,
        SamplingParams(n=ev.n_samples, max_new_tokens=ro.max_new_tokens, temperature=ev.temperature, seed=seed),
    )
    ok, totals = score(comps, ev.n_samples)
    n = ev.n_samples
    result = summarize_correctness([ok[i * n : (i + 1) * n] for i in range(len(rows))], ev.ks)
    greedy, _ = score(engine.generate(prompt_ids, SamplingParams(max_new_tokens=ro.max_new_tokens, greedy=True)), 1)
    result.update(
        {
            "k": max(ev.ks),
            "pass@k": result[f"pass@{max(ev.ks)}"],
            "greedy_accuracy": sum(greedy) / len(rows),
            "reward_mean": sum(totals) / len(totals),
            "num_prompts": len(rows),
            "n_samples": n,
        }
    )
    return result


def load_pairs(recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """Train and held-out preference rows; data problems become :class:`ConfigError` naming ``dpo.*``."""
    from rlkit.data.preference import load_preference_dataset, make_synthetic_pairs

    cfg = recipe.dpo
    if cfg.data is None:
        if recipe.data.source != "arithmetic":
            raise ConfigError(
                "dpo.data",
                "synthetic pairs exist only for data.source 'arithmetic'; give a "
                "preference file with prompt/chosen/rejected columns",
            )
        params = dict(recipe.data.params)
        try:
            train, held = make_synthetic_pairs(
                cfg.num_pairs,
                recipe.seed,
                cfg.rejected,
                split_seed=params.pop("seed", recipe.seed),
                n_eval_pairs=cfg.eval_pairs,
                **params,
            )
        except (ValueError, TypeError) as err:
            raise ConfigError("data.params", str(err)) from None
        return list(train), list(held)
    cols = dict(prompt_column=cfg.prompt_column, chosen_column=cfg.chosen_column, rejected_column=cfg.rejected_column)
    key = "dpo.data"
    try:
        train = load_preference_dataset(cfg.data, **cols)
        if cfg.eval_data:
            key = "dpo.eval_data"
            held = load_preference_dataset(cfg.eval_data, **cols)
        else:  # hold out a slice of the training data
            n = min(cfg.eval_pairs, max(1, len(train) // 10))
            if len(train) < 2:
                raise ValueError(f"{cfg.data!r} has {len(train)} pair(s): too few to hold some out (set dpo.eval_data)")
            split = train.train_test_split(test_size=n, seed=recipe.seed)
            train, held = split["train"], split["test"]
    except (ValueError, FileNotFoundError, KeyError, TypeError) as err:
        raise ConfigError(key, str(err.args[0] if err.args else err)) from None
    return list(train), list(held)[: cfg.eval_pairs]


def _check(recipe: Recipe) -> None:
    """Refuse, naming the key, what the DPO trainer does not do: --resume, mid-run checkpoints, LoRA, more than one
    learner, an arithmetic SFT warm start before training on the user's own preference data."""
    if recipe.resume or recipe.checkpoint.save_every:
        raise ConfigError(
            "checkpoint.save_every" if recipe.checkpoint.save_every else "resume",
            "algorithm 'dpo' has no mid-run checkpoints or --resume yet (final/ is still saved)",
        )
    if recipe.model.lora is not None:
        raise ConfigError("model.lora", "LoRA is not supported by the DPO trainer yet")
    if recipe.learner.num_workers != 1:
        raise ConfigError("learner.num_workers", "the DPO trainer runs in one process: use 1")
    if recipe.dpo.data and recipe.sft.enabled and recipe.data.source == "arithmetic" and not recipe.sft.data:
        raise ConfigError(
            "sft.enabled",
            "dpo.data is your own preference data but the SFT warm start would train on "
            "the arithmetic task: set sft.enabled=false and model.name_or_path to "
            "your SFT model, or give data.source and sft.data",
        )


def stopped_dir(out: Path, step: int) -> Path:
    """Where a DPO run stopped by a signal after ``step`` training steps saves its policy weights."""
    return out / f"stopped_at_step_{step:06d}"


@dataclass
class DPORun:
    """What the steps of one DPO run share, filled in top-down by :func:`_open_run`, :func:`_load_policy` and
    :func:`_attach_reference`: the output directory, the tokenized pairs, the policy and the frozen reference."""

    recipe: Recipe
    console: Any
    out: Path
    t0: float
    train_rows: list[dict]
    held_rows: list[dict]
    task_rows: list[dict]
    init_path: str = ""
    ref_path: str = ""
    device: torch.device | None = None
    policy: Any = None
    tokenizer: Any = None
    train_pairs: list[tuple] = field(default_factory=list)
    held_pairs: list[tuple] = field(default_factory=list)
    task_ids: list[list[int]] = field(default_factory=list)
    #: the reference model for ``dpo.reference: live`` (None once its log-probs are precomputed)
    reference: Any = None
    #: chosen and rejected reference log-probs of every training pair (``precomputed``) and held-out pair
    ref_train: tuple[torch.Tensor, torch.Tensor] | None = None
    ref_held: tuple[torch.Tensor, torch.Tensor] | None = None
    t_ref: float = 0.0

    @property
    def cfg(self):
        return self.recipe.dpo

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def eval_batch_size(self) -> int:
        """Batch size of the no-grad passes (reference log-probs, held-out metrics)."""
        return max(self.cfg.batch_size, 64)

    def evaluate(self, with_task: bool) -> dict:
        """Held-out preference metrics, and with ``with_task`` the task's pass@k / greedy accuracy."""
        assert self.ref_held is not None  # set by _attach_reference, before the first evaluation
        result = preference_eval(
            self.policy, self.held_pairs, *self.ref_held, self.cfg, self.device, self.pad_id, self.eval_batch_size
        )
        if with_task and self.task_rows:
            result.update(
                task_eval(
                    self.policy, self.tokenizer, self.recipe, self.task_rows, self.task_ids, seed=self.recipe.seed
                )
            )
        return result


@dataclass
class LoopResult:
    """What the training loop hands to :func:`_finish`."""

    eval_after: dict
    steps: int
    skipped: int
    train_time_s: float


def run_dpo(recipe: Recipe, console=None) -> dict:
    """Run offline DPO; SIGTERM/SIGINT finish the step, save the weights to :func:`stopped_dir` and exit with 128 +
    the signal (a signal outside the training loop, or a second one, stops at once without a save)."""
    from .faults import Stop, StopSignals

    stops = StopSignals().install()
    try:
        return _run_dpo(recipe, console, stops)
    except Stop as stop:
        _exit_stopped(recipe, stops, stop)
    finally:
        stops.restore()


def _exit_stopped(recipe: Recipe, stops, stop) -> NoReturn:
    """Exit with 128 + the signal; the line names the saved weights (none when the stop came outside the loop)."""
    from .faults import StopSignals

    if stop.checkpoint is None:
        stops.exit(stop, Path(recipe.output_dir))  # its line names no checkpoint: DPO writes none
    stops.restore()
    for sig in StopSignals.SIGNALS:  # the weights are saved: further signals change nothing
        signal.signal(sig, signal.SIG_IGN)
    signum = stops.received or stop.signum
    print(
        f"rlkit: received {signal.Signals(signum).name} at step {stops.step}: weights -> {stop.checkpoint}; "
        "DPO has no --resume (no optimizer state is saved): rerun to train from the start, or evaluate them "
        f"with rlkit eval {stop.checkpoint}",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(128 + signum) from None


def _run_dpo(recipe: Recipe, console, stops) -> dict:
    """Set-up, data and models, the reference log-probs, the evaluation before, the loop, the end."""
    from rich.console import Console

    run = _open_run(recipe, console or Console(soft_wrap=True))
    _load_policy(run)
    _attach_reference(run)
    eval_before = run.evaluate(recipe.eval.before)
    run.console.print(
        "eval before: "
        + ", ".join(
            f"{k} {v:.3f}" for k, v in eval_before.items() if k in ("pref/logp_accuracy", "pass@1", "greedy_accuracy")
        )
    )
    loop = _train(run, stops)
    return _finish(run, eval_before, loop)


def _open_run(recipe: Recipe, console) -> DPORun:
    """Check the recipe, create the output directory (with ``recipe.yaml``), load the pairs and the task prompts,
    print the run's header line and check the model sources."""
    import yaml

    from .setup import check_model_source, load_task_data, make_output_dir

    cfg, t0 = recipe.dpo, time.time()
    _check(recipe)
    out = make_output_dir(recipe.output_dir)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    train_rows, held_rows = load_pairs(recipe)
    do_task = cfg.task_eval if cfg.task_eval is not None else (cfg.data is None or recipe.data.source != "arithmetic")
    task_rows = load_task_data(recipe)[1][: recipe.eval.num_prompts] if do_task else []
    console.print(
        f"[bold]rlkit[/] DPO ({cfg.divergence}, {cfg.loss_type}, beta {cfg.beta}) | train pairs "
        f"{len(train_rows)} | held-out pairs {len(held_rows)} | reference {cfg.reference} | out {out}"
    )
    check_model_source(recipe)
    if cfg.reference_model and not Path(cfg.reference_model).expanduser().exists() and cfg.reference_model != "tiny":
        raise ConfigError("dpo.reference_model", f"model directory {cfg.reference_model!r} not found")
    return DPORun(recipe, console, out, t0, train_rows, held_rows, task_rows)


def _load_policy(run: DPORun) -> None:
    """The SFT warm start (or the given model) as the policy, in eval mode (no dropout); the pairs and the task
    prompts tokenized for it."""
    from rlkit.data.preference import tokenize_pairs
    from rlkit.models.loading import load_model_and_tokenizer

    from .setup import make_encoder, prepare_initial_models

    recipe = run.recipe
    run.init_path = prepare_initial_models(recipe, run.out, run.console)[0]
    run.ref_path = run.cfg.reference_model or run.init_path
    run.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(recipe.seed)
    m = recipe.model
    run.policy, run.tokenizer = load_model_and_tokenizer(
        run.init_path, dtype=m.dtype, seed=recipe.seed, attn_implementation=m.attn_implementation
    )
    run.policy.to(run.device).eval()
    context = getattr(run.policy.config, "max_position_embeddings", None)
    try:
        run.train_pairs = tokenize_pairs(run.train_rows, run.tokenizer, recipe.data.chat_template, context)
        run.held_pairs = tokenize_pairs(run.held_rows, run.tokenizer, recipe.data.chat_template, context)
    except ValueError as err:
        raise ConfigError("dpo.data", str(err)) from None
    encode = make_encoder(recipe, run.policy, run.tokenizer, {"held-out": run.task_rows})
    run.task_ids = encode([r["prompt"] for r in run.task_rows])


def _attach_reference(run: DPORun) -> None:
    """The frozen reference and its log-probs: the initial policy itself when they are precomputed (no second
    copy), else a separate frozen model kept for the live per-batch log-probs."""
    from rlkit.models.loading import load_model_and_tokenizer

    cfg, t_ref = run.cfg, time.time()
    if cfg.reference == "precomputed" and cfg.reference_model is None:
        reference = run.policy
    else:
        m = run.recipe.model
        reference = (
            load_model_and_tokenizer(
                run.ref_path, dtype=m.dtype, seed=run.recipe.seed, attn_implementation=m.attn_implementation
            )[0]
            .to(run.device)
            .eval()
        )
        reference.requires_grad_(False)
    bs = run.eval_batch_size
    run.ref_held = precompute_logps(reference, run.held_pairs, run.device, run.pad_id, bs)
    if cfg.reference == "precomputed":
        run.ref_train = precompute_logps(reference, run.train_pairs, run.device, run.pad_id, bs)
    else:
        run.reference = reference  # live: kept for the per-batch log-probs (precomputed: dropped here)
    run.t_ref = time.time() - t_ref


def epoch_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Indices of the pairs of each step, without end: a fresh permutation of ``range(n)`` (``random.Random(seed)``)
    is appended whenever fewer than ``batch_size`` are left, so a batch may span two epochs."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:  # next epoch: a fresh permutation after what is left of this one
            idx = list(range(n))
            rng.shuffle(idx)
            order += idx
        batch_idx, order = order[:batch_size], order[batch_size:]
        yield batch_idx


def optimizer_step(model, optimizer, loss: torch.Tensor, max_grad_norm: float | None) -> float | None:
    """Backward, clip and step; the clipped-before gradient norm, or None when the step was skipped because the
    loss or the gradient norm is not finite (the weights are then left as they were)."""
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return None
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    if not torch.isfinite(norm):
        return None
    optimizer.step()
    return float(norm)


def _train(run: DPORun, stops) -> LoopResult:
    """AdamW on the DPO loss for ``dpo.steps`` (or ``dpo.epochs``) steps, a log line per step, held-out metrics
    every ``dpo.eval_every`` steps and the full evaluation after the last one. A signal: the step in progress is
    finished and logged, then :func:`_save_stopped` raises :class:`.faults.Stop`."""
    from rlkit.utils.metrics import metrics_logger

    cfg = run.cfg
    total = cfg.steps or cfg.epochs * math.ceil(len(run.train_pairs) / cfg.batch_size)
    optimizer = adamw(
        (p for p in run.policy.parameters() if p.requires_grad), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    batches = epoch_batches(len(run.train_pairs), cfg.batch_size, run.recipe.seed)
    logger = metrics_logger(
        run.out,
        run.recipe.logging,
        config=run.recipe.model_dump(mode="json"),
        progress_total=total,
        progress_keys=("loss", "accuracy", "margin"),
        console=run.console,
    )
    t_loop, skipped = time.time(), 0
    try:
        stops.in_loop = True  # a signal from here on: finish the step, save the weights, stop
        for step in range(1, total + 1):
            ts = time.time()
            batch_idx = next(batches)
            pairs = [run.train_pairs[i] for i in batch_idx]
            rc, rr = _reference_logps(run, batch_idx, pairs)
            loss, metrics, _ = dpo_batch_loss(run.policy, rc, rr, pairs, cfg, run.device, run.pad_id)
            norm = optimizer_step(run.policy, optimizer, loss, cfg.max_grad_norm)
            if norm is None:
                skipped += 1
            else:
                metrics["grad_norm"] = norm
            metrics.update({"skipped_steps": skipped, "time/step": time.time() - ts})
            if step == total:
                t_loop = time.time() - t_loop
                eval_after = run.evaluate(True)
                metrics.update({f"eval/{k}": v for k, v in eval_after.items() if isinstance(v, float)})
            elif cfg.eval_every and step % cfg.eval_every == 0:
                metrics.update({f"eval/{k}": v for k, v in run.evaluate(False).items() if isinstance(v, float)})
            logger.log(step, metrics)
            stops.step = step
            if stops.received:
                _save_stopped(run, stops, step, total)
        stops.in_loop = False
    finally:
        logger.close()
    return LoopResult(eval_after, total, skipped, t_loop)


def _reference_logps(run: DPORun, batch_idx: list[int], pairs: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's chosen and rejected log-probs of a batch: looked up when precomputed, else computed now."""
    if run.ref_train is not None:
        return run.ref_train[0][batch_idx], run.ref_train[1][batch_idx]
    with torch.no_grad():
        return pair_logps(run.reference, pairs, run.device, run.pad_id)


def _save_stopped(run: DPORun, stops, step: int, total: int) -> NoReturn:
    """Save the policy to :func:`stopped_dir` with a ``stopped.json`` note and raise :class:`.faults.Stop`; a second
    signal abandons the save (atomic: no partial directory) and exits at once."""
    from rlkit.utils.checkpoint import save_hf_checkpoint

    from .faults import Stop

    note = {
        "algorithm": "dpo",
        "step": step,
        "steps": total,
        "resumable": False,
        "signal": signal.Signals(stops.received).name,
    }
    ck = save_hf_checkpoint(
        run.policy,
        run.tokenizer,
        stopped_dir(run.out, step),
        extra_files={"stopped.json": json.dumps(note, indent=2) + "\n"},
    )
    raise Stop(stops.received, ck)


def _finish(run: DPORun, eval_before: dict, loop: LoopResult) -> dict:
    """The ``final/`` checkpoint, ``summary.json``, the before/after table, the plot and the closing line."""
    from rlkit.utils.checkpoint import save_hf_checkpoint
    from rlkit.utils.evaluation import print_summary_table

    from .report import finish_run

    cfg, recipe, out = run.cfg, run.recipe, run.out
    final = str(save_hf_checkpoint(run.policy, run.tokenizer, out / "final")) if recipe.checkpoint.save_final else None
    summary = {
        "algorithm": "dpo",
        "divergence": cfg.divergence,
        "alpha": cfg.alpha,
        "beta": cfg.beta,
        "loss_type": cfg.loss_type,
        "label_smoothing": cfg.label_smoothing,
        "reference": cfg.reference,
        "eval_before": eval_before,
        "eval_after": loop.eval_after,
        "steps": loop.steps,
        "skipped_steps": loop.skipped,
        "train_pairs": len(run.train_pairs),
        "initial_model": run.init_path,
        "reference_model": run.ref_path,
        "final_checkpoint": final,
        "wall_time_s": time.time() - run.t0,
        "train_time_s": loop.train_time_s,
        "reference_time_s": run.t_ref,
    }

    def table() -> None:
        hide = {"k", "n_samples", "num_prompts", "pass@k", "pref/num_pairs"}
        shown = lambda ev: {k: v for k, v in ev.items() if k not in hide}  # noqa: E731
        samples = f", {len(run.task_rows)} prompts x {recipe.eval.n_samples} samples" if run.task_rows else ""
        print_summary_table(
            shown(eval_before),
            shown(loop.eval_after),
            console=run.console,
            title=f"held-out evaluation ({len(run.held_pairs)} pairs{samples}, before -> after DPO)",
        )

    return finish_run(out, summary, run.console, plot=recipe.logging.plot, table=table)
