"""The GRPO driver: rollouts -> rewards -> reference -> learner -> weight sync, through Ray actors (or, with
``ray.mode: inprocess``, the same worker classes in this process: ``rlkit.workers.local``)."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from rlkit.config import Recipe
from rlkit.utils.train_state import python_random_from_json, python_random_to_json, read_state

from .evaluate import correctness, evaluate, generate
from .faults import (Stop, StopSignals, TrainingError, call_when_alive, find_resume_point, learner_call,
                     prune_checkpoints, resume_recipe, truncate_metrics)
from .references import prepare_teachers, refresh_references
from .setup import (check_model_source, load_task_data, make_encoder, make_output_dir, prepare_initial_models,
                    resolve_reference, start_ray)


def run_grpo(recipe: Recipe, console=None) -> dict:
    """Run the online loop; SIGTERM/SIGINT finish the step, write a training checkpoint and exit with 128 + the
    signal (:class:`rlkit.trainer.faults.StopSignals`)."""
    stops = StopSignals().install()
    try:
        return _run_grpo(recipe, console, stops)
    except (Stop, TrainingError) as err:
        if isinstance(err, TrainingError) and stops.received is None:
            raise
        stops.exit(err, Path(recipe.output_dir))
    finally:
        stops.restore()


def _run_grpo(recipe: Recipe, console, stops: StopSignals) -> dict:
    from rich.console import Console

    from rlkit.utils.checkpoint import atomic_write_json
    from rlkit.utils.evaluation import print_summary_table
    from rlkit.utils.metrics import MetricsLogger

    from rlkit.workers.common import quiet_libraries

    quiet_libraries()
    console = console or Console(soft_wrap=True)  # long paths stay on one line in logs
    out = make_output_dir(recipe.output_dir)
    resume_from = find_resume_point(recipe, out, console)  # first: a refused --resume leaves out/ as it was
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    # the data order has its own generator: libraries seed the global one (TRL's SFT calls set_seed), which made
    # the order depend on whether the warm start was trained in this process or loaded from the cache
    rng = random.Random(recipe.seed)
    t0 = time.time()

    train, evalset = load_task_data(recipe)
    console.print(f"[bold]rlkit[/] {recipe.algorithm.upper()} | train prompts {len(train)} | eval prompts "
                  f"{min(len(evalset), recipe.eval.num_prompts)} (of {len(evalset)} held out) | out {out}")
    check_model_source(recipe)
    if recipe.learner.num_workers > 1:  # data-parallel learners (rlkit/workers/learner_group.py)
        from rlkit.workers.learner_group import LearnerGroup, check_recipe as check_learner_group

        check_learner_group(recipe)
    init_paths = prepare_initial_models(recipe, out, console)
    teachers = prepare_teachers(recipe, out, init_paths, console)  # sft:tiny teachers trained; tokenizers checked
    policy_path = str(resume_from) if resume_from else init_paths[0]
    start = read_state(resume_from)["driver"]["step"] if resume_from else 0

    from rlkit.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(policy_path)
    encode = make_encoder(recipe, model, tokenizer, {"train": train, "held-out": evalset})
    del model

    inproc = recipe.ray.mode == "inprocess"
    if inproc:  # every role in this process (rlkit.workers.local); the rollout engine shares the learner's module
        from rlkit.workers.common import setup_process

        setup_process(recipe.ray.torch_threads)
        console.print(f"in-process mode: no Ray; rollout, learner, reference and reward in this process, "
                      f"{recipe.ray.torch_threads} torch threads")
    else:
        start_ray(recipe.ray, console)
        stops.install()  # ray.init replaced the SIGTERM handler
    from rlkit.workers import Learner, PPOLearner, ReferenceWorker, RewardWorker
    from rlkit.workers.local import get, ray_error, spawn
    from rlkit.workers.rollout import spawn_rollout_workers

    ppo = recipe.algorithm == "ppo"  # PPO: the same loop with its own section and a learner with a critic
    rc, g = recipe.ray, (recipe.ppo if ppo else recipe.grpo)
    g = g.model_copy(update={"norm_length": g.norm_length or recipe.rollout.max_new_tokens})  # Dr. GRPO's constant L
    # Reward and reference workers are stateless: Ray restarts them and retries the call itself.
    reward = spawn(RewardWorker, dict(num_cpus=rc.cpus_per_reward, max_restarts=3, max_task_retries=3),
                   [r.model_dump(exclude_defaults=True) for r in recipe.rewards], inprocess=inproc)
    learner_kw = dict(temperature=recipe.rollout.temperature, dtype=recipe.model.dtype, seed=recipe.seed,
                      torch_threads=rc.torch_threads)
    if recipe.model.lora is not None:  # the learner trains adapters over the initial policy and serves "initial"
        learner_kw["lora"] = {**recipe.model.lora.model_dump(), "base_path": init_paths[0],
                              "kl_to_initial": recipe.eval.kl_to_initial}
    if recipe.learner.num_workers > 1:  # N ranks behind the same calls; rank 0 returns weights and checkpoints
        learner = LearnerGroup(recipe.learner.num_workers, policy_path, g.model_dump(), recipe.regularizers,
                               num_cpus=rc.cpus_per_learner, **learner_kw)
    else:
        learner = spawn(PPOLearner if ppo else Learner, dict(num_cpus=rc.cpus_per_learner),
                        policy_path, g.model_dump(), recipe.regularizers, inprocess=inproc, **learner_kw)
    # Rollout workers restart when they die; the driver re-sends the current weights and retries their shard
    # (see generate). In-process, the one rollout engine generates with the learner's module: nothing to sync.
    # With async rollouts the in-process engine keeps its own copy (it generates while the learner trains).
    shared = inproc and not g.async_rollout
    rollout = spawn_rollout_workers(recipe, policy_path, version=start, max_restarts=3, inprocess=inproc,
                                    share=(learner.instance.model, learner.instance.tokenizer) if shared else None)
    needs = get(learner.needs.remote())
    references = {}
    ref_keys = set(needs["ref_logprobs"]) | set(needs["ref_logits"])
    if recipe.eval.kl_to_initial:
        ref_keys.add("initial")
        needs["references"].setdefault("initial", {"type": "initial"})
    served = set(needs.get("served", ()))  # computed inside the learner (LoRA: "initial", adapters disabled)
    for key in sorted(ref_keys - served):
        kind, paths, weights = resolve_reference(needs["references"][key], init_paths, out, teachers)
        references[key] = spawn(ReferenceWorker, dict(num_cpus=rc.cpus_per_reference, max_restarts=3,
                                                      max_task_retries=3),
                                kind, paths, weights, dtype=recipe.model.dtype, temperature=recipe.rollout.temperature,
                                torch_threads=rc.torch_threads, name=key, shared_prefix=g.shared_prefix,
                                inprocess=inproc)

    ev = recipe.eval
    eval_prompts = [r["prompt"] for r in evalset][: ev.num_prompts]
    eval_answers = [r["answer"] for r in evalset][: ev.num_prompts]
    eval_ids = encode(eval_prompts)
    run_eval = lambda: evaluate(rollout, reward, eval_prompts, eval_ids, eval_answers, ev.n_samples, ev.ks,  # noqa: E731
                                ev.temperature, recipe.rollout.max_new_tokens, seed=recipe.seed + 10_000,
                                reference=references.get("initial", learner if "initial" in served else None),
                                on_restart=resend,
                                version=sync["version"])
    # the latest weights (an object ref) and their version: a restarted rollout worker is given them again
    sync = {"weights": None, "version": start}

    def resend(worker) -> None:
        if sync["weights"] is not None:
            call_when_alive(lambda: worker.update_weights.remote(sync["weights"], sync["version"]))

    driver = get(learner.load_training_state.remote(str(resume_from))) if resume_from else None
    reh = None  # DPH-RL rehearsal: the split pre-sampled by the initial policy (rlkit/trainer/rehearsal.py)
    if recipe.rehearsal is not None:
        from .rehearsal import default_responses_per_step, prepare_rehearsal

        reh = prepare_rehearsal(recipe, out, train, encode, rollout, reward,
                                references.get("initial", learner if "initial" in served else None), init_paths[0],
                                resume=driver is not None, console=console, on_restart=resend, version=sync["version"])
        reh_per_step = recipe.rehearsal.responses_per_step or default_responses_per_step(g.prompts_per_step,
                                                                                         g.group_size)
        if len(reh.explore) < g.prompts_per_step:
            from .faults import TrainingError

            raise TrainingError(f"rehearsal: only {len(reh.explore)} training prompts are left for exploration "
                                f"(D_exp), fewer than grpo.prompts_per_step={g.prompts_per_step}")
    if driver:
        eval_before = driver["eval_before"]
        order, cursor = driver["order"], driver["cursor"]
        rng.setstate(python_random_from_json(driver["py_random"]))
        truncate_metrics(out / "metrics.jsonl", start)  # steps after the checkpoint are redone, logged once
        console.print(f"resumed from {resume_from} at step {start}")
    else:
        eval_before = run_eval() if ev.before else None
        order = list(range(len(train))) if reh is None else list(reh.explore)  # rehearsal: GRPO sees D_exp only
        cursor = len(order)
    if eval_before and not driver:
        console.print(f"eval before: pass@1 {eval_before['pass@1']:.3f} | pass@{ev.ks[-1]} "
                      f"{eval_before[f'pass@{ev.ks[-1]}']:.3f} | greedy {eval_before['greedy_accuracy']:.3f}")

    sampling = dict(n=g.group_size, max_new_tokens=recipe.rollout.max_new_tokens,
                    temperature=recipe.rollout.temperature, top_p=recipe.rollout.top_p, top_k=recipe.rollout.top_k)
    t_loop = time.time()
    progress_keys = ("reward", *(f"{label}/value" for label in needs["labels"]),
                     *(f"rehearsal/{label}/value" for label in needs.get("rehearsal", ())), "kl_initial/k3", "entropy")
    with MetricsLogger(out, tensorboard=recipe.logging.tensorboard, progress_total=g.steps,
                       progress_keys=progress_keys, print_every=recipe.logging.print_every) as logger:
        def draw() -> list[dict]:
            nonlocal cursor
            if cursor + g.prompts_per_step > len(order):
                rng.shuffle(order)
                cursor = 0
            cursor += g.prompts_per_step
            return [train[i] for i in order[cursor - g.prompts_per_step:cursor]]

        def rollouts(rows: list[dict], step: int, version: int) -> list[dict]:
            return generate(rollout, encode([r["prompt"] for r in rows]),
                            {**sampling, "seed": recipe.seed * 100_003 + step}, on_restart=resend, version=version)

        # references that never change can score a batch as soon as it is generated; a TR-DPO reference must
        # score it after the refresh that precedes the step that trains on it
        fixed = {k for k in references if not (needs["references"].get(k) or {}).get("refresh_every")}

        hidden_refs = set(needs.get("ref_hidden", ()))  # references that send hidden states instead of logits

        def reference_futures(comps: list[dict], keys) -> dict:
            p_ids, c_ids = [c["prompt_ids"] for c in comps], [c["token_ids"] for c in comps]
            return {k: references[k].compute.remote(p_ids, c_ids, k in needs["ref_logits"] and k not in hidden_refs,
                                                    hidden=k in hidden_refs) for k in keys}

        def score(rows: list[dict], comps: list[dict], keys) -> dict:
            """Rewards and reference log-probs of a batch; the reference forwards and the reward scoring run at
            the same time in their own actors."""
            futures = reference_futures(comps, keys)
            scored = get(reward.score.remote([r["prompt"] for r in rows for _ in range(g.group_size)],
                                             [c["text"] for c in comps],
                                             [r["answer"] for r in rows for _ in range(g.group_size)]))
            return {"scored": scored, "refs": {k: get(f) for k, f in futures.items()}}

        def prepare(rows: list[dict], step: int, version: int, keys) -> dict:
            t = time.time()
            comps = rollouts(rows, step, version)
            t_gen = time.time() - t
            return {"rows": rows, "comps": comps, **score(rows, comps, keys), "t_gen": t_gen,
                    "t_score": time.time() - t - t_gen}

        # grpo.async_rollout: the next step's batch is generated, rewarded and scored by the fixed references (in
        # their actors, or in a thread in-process) while the learner trains on this one, with weights one step
        # old; the learner then uses the rollout log-probs as the behaviour policy
        pool = ThreadPoolExecutor(1, thread_name_prefix="rollout") if g.async_rollout else None
        pending = None  # future of the prefetched step's prepared batch
        heads_sent: dict[str, int] = {}  # lm_head version the learner holds, per hidden-state reference
        resume_point = (list(order), cursor, rng.getstate())  # data position of the first step not yet drawn
        if reh is not None and start == 0:
            logger.log(0, reh.metrics())
        stops.in_loop, stops.step = True, start
        for step in range(start, g.steps):
            ts = time.time()
            if pending is not None:
                batch, pending = pending.result(), None
                late = sorted(set(references) - set(batch["refs"]))  # refreshed references score it now
                batch["refs"].update({k: get(f) for k, f in reference_futures(batch["comps"], late).items()})
            else:
                resume_point = (list(order), cursor, rng.getstate())
                batch = prepare(draw(), step, sync["version"], list(references))
            t_wait = time.time() - ts
            if pool is not None and step + 1 < g.steps:
                resume_point = (list(order), cursor, rng.getstate())
                pending = pool.submit(prepare, draw(), step + 1, sync["version"], sorted(fixed))
            for k, r in batch["refs"].items():  # hidden-state references: their lm_head once per version
                if "hidden" in r and heads_sent.get(k) != r["head_version"]:
                    r["head"] = get(references[k].head.remote())
                    heads_sent[k] = r["head_version"]
            comps, scored = batch["comps"], batch["scored"]
            data = {"step": step, "prompt_ids": [c["prompt_ids"] for c in comps],
                    "completion_ids": [c["token_ids"] for c in comps], "scores": scored["totals"],
                    "correct": correctness(scored["components"]), "rollout_logprobs": [c["logprobs"] for c in comps],
                    "refs": batch["refs"]}
            if reh is not None and (rows := reh.batch(step, reh_per_step, recipe.seed)):
                data["rehearsal"] = rows  # stored pi_0 responses: only their divergence is trained on
            metrics = learner_call(learner.train_step.remote(data), step, out)
            if shared:  # the rollout engine already has the new weights: it is the learner's module
                sync["version"] = step + 1
                refresh_references(references, needs["references"], step + 1, learner.get_weights.remote)
                rollout[0].update_weights.remote(None, step + 1)
            else:  # workers fetch the weights from the object store (in-process: a state dict in memory)
                sync.update(weights=learner.get_weights.remote(), version=step + 1)
                refresh_references(references, needs["references"], step + 1, sync["weights"])  # TR-DPO refresh
            for i, w in enumerate([] if shared else rollout):
                try:
                    get(w.update_weights.remote(sync["weights"], step + 1))
                except ray_error():  # died in between: Ray restarts it; send again
                    print(f"rollout worker {i} died during the weight sync: re-sending weights", flush=True)
                    resend(w)
            metrics.update({f"reward/{k}": sum(v) / len(v) for k, v in scored["components"].items()})
            metrics.update({f"reward/failures/{k}": float(v) for k, v in scored.get("failures", {}).items()})
            metrics.update({"time/step": time.time() - ts, "time/generate": batch["t_gen"],
                            "time/score": batch["t_score"]})
            if pool is not None:  # how long this step waited for its prefetched batch
                metrics["time/wait_rollout"] = t_wait
            logger.log(step + 1, metrics)
            stops.step = step + 1
            # a signal during the step (SIGTERM/SIGINT): checkpoint now, then stop (StopSignals)
            if stops.received or recipe.checkpoint.save_every and (step + 1) % recipe.checkpoint.save_every == 0:
                # the data position before any prefetched batch: a resumed run draws that batch again
                ck_order, ck_cursor, ck_rng = resume_point if pending is not None else (order, cursor, rng.getstate())
                state = {"step": step + 1, "order": ck_order, "cursor": ck_cursor, "eval_before": eval_before,
                         "py_random": python_random_to_json(ck_rng), "recipe": resume_recipe(recipe)}
                ck_path = out / "checkpoints" / f"step_{step + 1:06d}"
                learner_call(learner.save.remote(str(ck_path), state), step, out)
                prune_checkpoints(out / "checkpoints", recipe.checkpoint.keep)
                if stops.received:
                    if pool is not None:
                        pool.shutdown(wait=False, cancel_futures=True)
                    raise Stop(stops.received, ck_path)
        stops.in_loop = False

    if pool is not None:
        pool.shutdown()
    t_loop = time.time() - t_loop
    eval_after = run_eval()
    final = get(learner.save.remote(str(out / "final"))) if recipe.checkpoint.save_final else None
    summary = {"eval_before": eval_before, "eval_after": eval_after, "steps": g.steps,
               "regularizers": get(learner.state.remote()), "initial_model": init_paths[0],
               "final_checkpoint": final, "wall_time_s": time.time() - t0, "train_time_s": t_loop}
    if reh is not None:
        summary["rehearsal"] = {**reh.metrics(), "responses_per_step": reh_per_step}
    atomic_write_json(out / "summary.json", summary)
    if eval_before:
        hide = {"k", "n_samples", "num_prompts", "pass@k"}
        shown = lambda ev: {k: v for k, v in ev.items() if k not in hide}  # noqa: E731
        print_summary_table(shown(eval_before), shown(eval_after), console=console,
                            title=f"held-out evaluation, {eval_after['num_prompts']} prompts x "
                                  f"{eval_after['n_samples']} samples (before -> after {recipe.algorithm.upper()})")
    if recipe.logging.plot:
        from rlkit.utils.plotting import plot_training_curves

        plot_training_curves(out / "metrics.jsonl", out / "training_curves.png")
    console.print(f"done in {summary['wall_time_s']:.0f}s -> {out / 'summary.json'}")
    return summary
