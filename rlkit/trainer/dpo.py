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
from pathlib import Path

import torch

from rlkit._config import ConfigError
from rlkit.config import Recipe


def sequence_logps(model, pairs: list[tuple], which: int, device, pad_id: int) -> torch.Tensor:
    """``log pi(y | x)`` summed over the response tokens (prompt tokens excluded), one value per pair;
    ``which``: 1 = chosen, 2 = rejected."""
    from rlkit.modeling import collate, completion_logits, token_logprobs

    batch = collate([p[0] for p in pairs], [p[which] for p in pairs], pad_id)
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    lp = token_logprobs(completion_logits(model, batch), batch["completion_ids"])
    return (lp * batch["completion_mask"]).sum(-1)


def pair_logps(model, pairs: list[tuple], device, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return sequence_logps(model, pairs, 1, device, pad_id), sequence_logps(model, pairs, 2, device, pad_id)


@torch.no_grad()
def precompute_logps(model, pairs: list[tuple], device, pad_id: int, batch_size: int = 64):
    """Chosen and rejected sequence log-probs of every pair, in one pass over the data (CPU tensors ``[N]``)."""
    out = [pair_logps(model, pairs[i:i + batch_size], device, pad_id) for i in range(0, len(pairs), batch_size)]
    return torch.cat([c for c, _ in out]).cpu(), torch.cat([r for _, r in out]).cpu()


def dpo_batch_loss(policy, ref_c: torch.Tensor, ref_r: torch.Tensor, pairs: list[tuple], cfg, device, pad_id: int):
    """f-DPO loss of a batch (Rafailov et al. 2023, arXiv 2305.18290; Wang et al. 2023, arXiv 2309.16240):

        L = mean_i  -log sigmoid( beta [ f'(pi(y_w|x) / ref(y_w|x)) - f'(pi(y_l|x) / ref(y_l|x)) ] )

    with sequence probabilities over response tokens; ``f'(u) = log u`` (reverse KL) is standard DPO. cDPO
    (``label_smoothing``), IPO and hinge as in :func:`rlkit.objectives.fdpo_loss`. Returns ``(loss, metrics)``."""
    from rlkit.objectives import dpo_loss

    pc, pr = pair_logps(policy, pairs, device, pad_id)
    loss, metrics = dpo_loss(pc, pr, ref_c.to(pc), ref_r.to(pr), beta=cfg.beta, divergence=cfg.divergence,
                             alpha=cfg.alpha, label_smoothing=cfg.label_smoothing, loss_type=cfg.loss_type)
    metrics.update({"loss": metrics["loss/dpo"], "logps/chosen": float(pc.detach().mean()),
                    "logps/rejected": float(pr.detach().mean())})
    return loss, metrics, (pc.detach(), pr.detach())


@torch.no_grad()
def preference_eval(policy, pairs, ref_c, ref_r, cfg, device, pad_id: int, batch_size: int = 64) -> dict:
    """Held-out DPO metrics: ``pref/accuracy`` (implicit reward of chosen > rejected), ``pref/logp_accuracy``
    (the policy itself gives chosen the higher sequence log-prob), loss, margin, ECE."""
    from rlkit.objectives import dpo_loss

    pc, pr = precompute_logps(policy, pairs, device, pad_id, batch_size)
    loss, m = dpo_loss(pc, pr, ref_c, ref_r, beta=cfg.beta, divergence=cfg.divergence, alpha=cfg.alpha,
                       label_smoothing=cfg.label_smoothing, loss_type=cfg.loss_type)
    return {"pref/accuracy": m["rewards/accuracy"], "pref/logp_accuracy": float((pc > pr).float().mean()),
            "pref/loss": float(loss), "pref/margin": m["rewards/margin"], "pref/ece": m["rewards/ece"],
            "pref/num_pairs": len(pairs)}


@torch.no_grad()
def task_eval(model, tokenizer, recipe: Recipe, rows: list[dict], prompt_ids: list[list[int]], seed: int) -> dict:
    """pass@k (unbiased, ``eval.n_samples`` per prompt), greedy accuracy and mean reward on held-out task prompts,
    generated in-process (``transformers``); a sample is correct when the first reward component gives full marks."""
    from reward_models import CompositeReward

    from rlkit.rollout.base import SamplingParams
    from rlkit.rollout.hf import TransformersEngine
    from rlkit.utils.evaluation import summarize_correctness

    ev, ro = recipe.eval, recipe.rollout
    engine = TransformersEngine(model, tokenizer, batch_size=ro.batch_size, sampler=ro.sampler)
    reward = CompositeReward([r.model_dump(exclude_defaults=True) for r in recipe.rewards])
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]

    def score(comps, n):
        res = reward.compute([p for p in prompts for _ in range(n)], [c.text for c in comps],
                             [a for a in answers for _ in range(n)])
        first = next(iter(res.components.values()))
        return [s >= 1.0 - 1e-6 for s in first], res.totals

    comps = engine.generate(prompt_ids, SamplingParams(n=ev.n_samples, max_new_tokens=ro.max_new_tokens,
                                                       temperature=ev.temperature, seed=seed))
    ok, totals = score(comps, ev.n_samples)
    n = ev.n_samples
    result = summarize_correctness([ok[i * n:(i + 1) * n] for i in range(len(rows))], ev.ks)
    greedy, _ = score(engine.generate(prompt_ids, SamplingParams(max_new_tokens=ro.max_new_tokens, greedy=True)), 1)
    result.update({"k": max(ev.ks), "pass@k": result[f"pass@{max(ev.ks)}"], "greedy_accuracy": sum(greedy) / len(rows),
                   "reward_mean": sum(totals) / len(totals), "num_prompts": len(rows), "n_samples": n})
    return result


def load_pairs(recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """Train and held-out preference rows; data problems become :class:`ConfigError` naming ``dpo.*``."""
    from rlkit.data.preference import load_preference_dataset, make_synthetic_pairs

    cfg = recipe.dpo
    if cfg.data is None:
        if recipe.data.source != "arithmetic":
            raise ConfigError("dpo.data", "synthetic pairs exist only for data.source 'arithmetic'; give a "
                                          "preference file with prompt/chosen/rejected columns")
        params = dict(recipe.data.params)
        try:
            train, held = make_synthetic_pairs(cfg.num_pairs, recipe.seed, cfg.rejected,
                                               split_seed=params.pop("seed", recipe.seed),
                                               n_eval_pairs=cfg.eval_pairs, **params)
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
    if recipe.resume or recipe.checkpoint.save_every:
        raise ConfigError("checkpoint.save_every" if recipe.checkpoint.save_every else "resume",
                          "algorithm 'dpo' has no mid-run checkpoints or --resume yet (final/ is still saved)")
    if recipe.model.lora is not None:
        raise ConfigError("model.lora", "LoRA is not supported by the DPO trainer yet")
    if recipe.learner.num_workers != 1:
        raise ConfigError("learner.num_workers", "the DPO trainer runs in one process: use 1")
    if recipe.dpo.data and recipe.sft.enabled and recipe.data.source == "arithmetic" and not recipe.sft.data:
        raise ConfigError("sft.enabled", "dpo.data is your own preference data but the SFT warm start would train on "
                                         "the arithmetic task: set sft.enabled=false and model.name_or_path to "
                                         "your SFT model, or give data.source and sft.data")


def stopped_dir(out: Path, step: int) -> Path:
    """Where a DPO run stopped by a signal after ``step`` training steps saves its policy weights."""
    return out / f"stopped_at_step_{step:06d}"


def run_dpo(recipe: Recipe, console=None) -> dict:
    """Run offline DPO; SIGTERM/SIGINT finish the step, save the weights to :func:`stopped_dir` and exit with 128 +
    the signal (a signal outside the training loop, or a second one, stops at once without a save)."""
    from .faults import Stop, StopSignals

    stops = StopSignals().install()
    try:
        return _run_dpo(recipe, console, stops)
    except Stop as stop:
        if stop.checkpoint is None:
            stops.exit(stop, Path(recipe.output_dir))  # its line names no checkpoint: DPO writes none
        stops.restore()
        for sig in StopSignals.SIGNALS:  # the weights are saved: further signals change nothing
            signal.signal(sig, signal.SIG_IGN)
        signum = stops.received or stop.signum
        print(f"rlkit: received {signal.Signals(signum).name} at step {stops.step}: weights -> {stop.checkpoint}; "
              "DPO has no --resume (no optimizer state is saved): rerun to train from the start, or evaluate them "
              f"with rlkit eval {stop.checkpoint}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        stops.restore()


def _run_dpo(recipe: Recipe, console, stops) -> dict:
    import yaml
    from rich.console import Console

    from rlkit.data.preference import tokenize_pairs
    from rlkit.models.loading import load_model_and_tokenizer
    from rlkit.utils.checkpoint import atomic_write_json, save_hf_checkpoint
    from rlkit.utils.evaluation import print_summary_table
    from rlkit.utils.metrics import MetricsLogger

    from .setup import check_model_source, load_task_data, make_encoder, make_output_dir, prepare_initial_models

    console = console or Console(soft_wrap=True)
    cfg, t0 = recipe.dpo, time.time()
    _check(recipe)
    out = make_output_dir(recipe.output_dir)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    train_rows, held_rows = load_pairs(recipe)
    do_task = cfg.task_eval if cfg.task_eval is not None else (cfg.data is None or recipe.data.source != "arithmetic")
    task_rows = load_task_data(recipe)[1][: recipe.eval.num_prompts] if do_task else []
    console.print(f"[bold]rlkit[/] DPO ({cfg.divergence}, {cfg.loss_type}, beta {cfg.beta}) | train pairs "
                  f"{len(train_rows)} | held-out pairs {len(held_rows)} | reference {cfg.reference} | out {out}")
    check_model_source(recipe)
    if cfg.reference_model and not Path(cfg.reference_model).expanduser().exists() and cfg.reference_model != "tiny":
        raise ConfigError("dpo.reference_model", f"model directory {cfg.reference_model!r} not found")
    init_path = prepare_initial_models(recipe, out, console)[0]
    ref_path = cfg.reference_model or init_path
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(recipe.seed)
    policy, tokenizer = load_model_and_tokenizer(init_path, dtype=recipe.model.dtype, seed=recipe.seed)
    policy.to(device).eval()
    pad_id = tokenizer.pad_token_id
    context = getattr(policy.config, "max_position_embeddings", None)
    try:
        train_pairs = tokenize_pairs(train_rows, tokenizer, recipe.data.chat_template, context)
        held_pairs = tokenize_pairs(held_rows, tokenizer, recipe.data.chat_template, context)
    except ValueError as err:
        raise ConfigError("dpo.data", str(err)) from None
    task_ids = make_encoder(recipe, policy, tokenizer, {"held-out": task_rows})([r["prompt"] for r in task_rows])

    # the frozen reference: the initial policy itself when its log-probs are precomputed (no second copy)
    t_ref = time.time()
    if cfg.reference == "precomputed" and cfg.reference_model is None:
        reference = policy
    else:
        reference = load_model_and_tokenizer(ref_path, dtype=recipe.model.dtype, seed=recipe.seed)[0].to(device).eval()
        reference.requires_grad_(False)
    bs = max(cfg.batch_size, 64)
    ref_held = precompute_logps(reference, held_pairs, device, pad_id, bs)
    ref_train = precompute_logps(reference, train_pairs, device, pad_id, bs) if cfg.reference == "precomputed" else None
    if cfg.reference == "precomputed":
        reference = None  # not needed any more
    t_ref = time.time() - t_ref

    def evaluate(with_task: bool) -> dict:
        result = preference_eval(policy, held_pairs, *ref_held, cfg, device, pad_id, bs)
        if with_task and task_rows:
            result.update(task_eval(policy, tokenizer, recipe, task_rows, task_ids, seed=recipe.seed))
        return result

    eval_before = evaluate(recipe.eval.before)
    console.print("eval before: " + ", ".join(f"{k} {v:.3f}" for k, v in eval_before.items()
                                              if k in ("pref/logp_accuracy", "pass@1", "greedy_accuracy")))
    per_epoch = math.ceil(len(train_pairs) / cfg.batch_size)
    total = cfg.steps or cfg.epochs * per_epoch
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    rng, order = random.Random(recipe.seed), []
    logger = MetricsLogger(out, tensorboard=recipe.logging.tensorboard, progress_total=total,
                           progress_keys=("loss", "accuracy", "margin"), print_every=recipe.logging.print_every,
                           console=console)
    t_loop, skipped = time.time(), 0
    from .faults import Stop

    try:
        stops.in_loop = True  # a signal from here on: finish the step, save the weights, stop
        for step in range(1, total + 1):
            ts = time.time()
            if len(order) < cfg.batch_size:  # next epoch: a fresh permutation after what is left of this one
                idx = list(range(len(train_pairs)))
                rng.shuffle(idx)
                order += idx
            batch_idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
            pairs = [train_pairs[i] for i in batch_idx]
            if ref_train is not None:
                rc, rr = ref_train[0][batch_idx], ref_train[1][batch_idx]
            else:
                with torch.no_grad():
                    rc, rr = pair_logps(reference, pairs, device, pad_id)
            loss, metrics, _ = dpo_batch_loss(policy, rc, rr, pairs, cfg, device, pad_id)
            optimizer.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm or float("inf"))
                if torch.isfinite(norm):
                    optimizer.step()
                    metrics["grad_norm"] = float(norm)
                else:
                    skipped += 1
            else:
                skipped += 1
            metrics.update({"skipped_steps": skipped, "time/step": time.time() - ts})
            if step == total:
                t_loop = time.time() - t_loop
                eval_after = evaluate(True)
                metrics.update({f"eval/{k}": v for k, v in eval_after.items() if isinstance(v, float)})
            elif cfg.eval_every and step % cfg.eval_every == 0:
                metrics.update({f"eval/{k}": v for k, v in evaluate(False).items() if isinstance(v, float)})
            logger.log(step, metrics)
            stops.step = step
            if stops.received:
                # a second signal abandons the save (atomic: no partial directory) and exits at once
                note = {"algorithm": "dpo", "step": step, "steps": total, "resumable": False,
                        "signal": signal.Signals(stops.received).name}
                ck = save_hf_checkpoint(policy, tokenizer, stopped_dir(out, step),
                                        extra_files={"stopped.json": json.dumps(note, indent=2) + "\n"})
                raise Stop(stops.received, ck)
        stops.in_loop = False
    finally:
        logger.close()
    final = str(save_hf_checkpoint(policy, tokenizer, out / "final")) if recipe.checkpoint.save_final else None
    summary = {"algorithm": "dpo", "divergence": cfg.divergence, "alpha": cfg.alpha, "beta": cfg.beta,
               "loss_type": cfg.loss_type, "label_smoothing": cfg.label_smoothing, "reference": cfg.reference,
               "eval_before": eval_before, "eval_after": eval_after, "steps": total, "skipped_steps": skipped,
               "train_pairs": len(train_pairs), "initial_model": init_path, "reference_model": ref_path,
               "final_checkpoint": final, "wall_time_s": time.time() - t0, "train_time_s": t_loop,
               "reference_time_s": t_ref}
    atomic_write_json(out / "summary.json", summary)
    hide = {"k", "n_samples", "num_prompts", "pass@k", "pref/num_pairs"}
    shown = lambda ev: {k: v for k, v in ev.items() if k not in hide}  # noqa: E731
    print_summary_table(shown(eval_before), shown(eval_after), console=console,
                        title=f"held-out evaluation ({len(held_pairs)} pairs"
                              + (f", {len(task_rows)} prompts x {recipe.eval.n_samples} samples" if task_rows else "")
                              + ", before -> after DPO)")
    if recipe.logging.plot:
        from rlkit.utils.plotting import plot_training_curves

        plot_training_curves(out / "metrics.jsonl", out / "training_curves.png")
    console.print(f"done in {summary['wall_time_s']:.0f}s -> {out / 'summary.json'}")
    return summary
