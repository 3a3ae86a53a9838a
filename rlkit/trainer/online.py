"""OnlineTrainer: the GRPO and PPO loop, in both placements (Ray actors, or the same workers in this process).

Per step, :meth:`OnlineTrainer.fit` runs: **rollout** (the rollout workers generate ``group_size`` completions per
prompt, :class:`rlkit.types.RolloutBatch`) -> **score** (the reward worker, :class:`rlkit.types.ScoredBatch`) ->
**reference** (the reference workers' log-probs, logits or hidden states; which ones, and in what form, is the
:class:`~rlkit.trainer.reference_plan.ReferencePlan` decided at set-up) -> **train** (one learner step) -> **sync**
(the new weights to the rollout engines, TR-DPO references refreshed: :mod:`rlkit.trainer.weight_sync`) -> **log /
checkpoint**. The prompts come from a :class:`~rlkit.trainer.data_stream.PromptStream`; with
``grpo.async_rollout`` the next step's rollout, score and fixed references are prepared in a thread
(:class:`~rlkit.trainer.data_stream.Prefetch`) while the learner trains, with weights one step old.

Around the loop: set-up (output directory, resume point, SFT warm starts and teachers, workers), an evaluation before
and after, DPH-RL rehearsal rows added to every train step (:mod:`rlkit.trainer.rehearsal`), checkpoints every
``checkpoint.save_every`` steps and at a stop signal (:class:`rlkit.trainer.faults.StopSignals`, which
:func:`rlkit.trainer.grpo.run_grpo` installs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import yaml

from rlkit.config import Recipe
from rlkit.types import ReferenceOutput, RolloutBatch, ScoredBatch, TrainBatch
from rlkit.utils.train_state import read_state
from rlkit.workers.local import get

from .data_stream import Prefetch, PromptStream
from .evaluate import correctness, evaluate, generate
from .faults import (
    Stop,
    StopSignals,
    TrainingError,
    find_resume_point,
    learner_call,
    prune_checkpoints,
    resume_recipe,
    truncate_metrics,
)
from .reference_plan import ReferencePlan, reference_file, resolve_reference
from .references import prepare_references
from .setup import check_model_source, load_task_data, make_encoder, make_output_dir, prepare_initial_models, start_ray
from .weight_sync import WeightSync, make_weight_sync


def _why(rc) -> str:
    """`` (ray.mode auto: ...)`` when the placement was chosen by ``ray.mode: auto``, else nothing."""
    return f" ({rc._chosen_by})" if rc._chosen_by else ""


@dataclass
class StepBatch:
    """What one step trains on: its rollouts, their scores, the references' outputs by key, and how long generating
    and scoring took (seconds)."""

    rollout: RolloutBatch
    scored: ScoredBatch
    refs: dict[str, ReferenceOutput]
    t_gen: float
    t_score: float


class OnlineTrainer:
    """One GRPO or PPO run (``recipe.algorithm``): :meth:`run` = :meth:`setup`, :meth:`fit`, :meth:`finish`."""

    def __init__(self, recipe: Recipe, console=None, stops: StopSignals | None = None):
        from rich.console import Console

        from rlkit.workers.common import quiet_libraries

        quiet_libraries()
        self.recipe, self.stops = recipe, stops or StopSignals()
        self.console = console or Console(soft_wrap=True)  # long paths stay on one line in logs
        self.ppo = recipe.algorithm == "ppo"  # PPO: the same loop with its own section and a learner with a critic
        cfg = recipe.ppo if self.ppo else recipe.grpo
        self.cfg = cfg.model_copy(update={"norm_length": cfg.norm_length or recipe.rollout.max_new_tokens})  # Dr. GRPO
        self.inproc = recipe.ray.mode == "inprocess"
        # in-process the one rollout engine generates with the learner's module; with async rollouts it keeps its
        # own copy (it generates while the learner trains), and so it does in a rollout.dtype of its own
        ro = recipe.rollout
        self.own_dtype = ro.dtype not in (None, recipe.model.dtype)
        self.shared = self.inproc and not self.cfg.async_rollout and not self.own_dtype
        self.sampling = dict(
            n=self.cfg.group_size,
            max_new_tokens=ro.max_new_tokens,
            temperature=ro.temperature,
            top_p=ro.top_p,
            top_k=ro.top_k,
        )
        self.prefetch: Prefetch | None = None
        self.heads_sent: dict[str, int | None] = {}  # lm_head version the learner holds, per hidden-state reference

    def run(self) -> dict:
        self.setup()
        self.fit()
        return self.finish()

    # ------------------------------------------------------------------------------------------------ set-up
    def setup(self) -> None:
        self._open_run()
        self._prepare_models()
        self._start_placement()
        self._spawn_workers()
        self._spawn_references()
        self._prepare_eval()
        self._restore_or_begin()

    def _open_run(self) -> None:
        r = self.recipe
        self.out = make_output_dir(r.output_dir)
        # first: a refused --resume leaves out/ as it was
        self.resume_from = find_resume_point(r, self.out, self.console)
        (self.out / "recipe.yaml").write_text(yaml.safe_dump(r.model_dump(mode="json"), sort_keys=False))
        self.t0 = time.time()

    def _prepare_models(self) -> None:
        """Task data, SFT warm starts, teachers, the prompt encoder (prompts checked against the context)."""
        from rlkit.models.loading import load_model_and_tokenizer

        r, out = self.recipe, self.out
        self.train_rows, self.evalset = load_task_data(r)
        self.console.print(
            f"[bold]rlkit[/] {r.algorithm.upper()} | train prompts {len(self.train_rows)} | eval "
            f"prompts {min(len(self.evalset), r.eval.num_prompts)} (of {len(self.evalset)} held out) "
            f"| out {out}"
        )
        check_model_source(r)
        if r.learner.num_workers > 1:  # data-parallel learners (rlkit/workers/learner_group.py)
            from rlkit.workers.learner_group import check_recipe as check_learner_group

            check_learner_group(r)
        self.init_paths = prepare_initial_models(r, out, self.console)
        # each reference type's set-up (an sft:tiny teacher trained; teachers' tokenizers checked)
        self.prepared = prepare_references(r, out, self.init_paths, self.console)
        self.policy_path = str(self.resume_from) if self.resume_from else self.init_paths[0]
        self.start = read_state(self.resume_from)["driver"]["step"] if self.resume_from else 0
        # with the run's attention kernel: an unavailable one fails here, before any worker starts
        model, tokenizer = load_model_and_tokenizer(self.policy_path, attn_implementation=r.model.attn_implementation)
        self.encode = make_encoder(r, model, tokenizer, {"train": self.train_rows, "held-out": self.evalset})

    def _start_placement(self) -> None:
        rc = self.recipe.ray
        if self.inproc:  # every role in this process (rlkit.workers.local)
            from rlkit.utils.allocator import allocator_line
            from rlkit.workers.common import setup_process

            setup_process(rc.torch_threads)
            self.console.print(
                f"in-process mode{_why(rc)}: no Ray; rollout, learner, reference and reward in this process, "
                f"{rc.torch_threads} torch threads, {allocator_line()}"
            )
        else:
            if rc._chosen_by:
                self.console.print(f"Ray actors ({rc._chosen_by})")
            start_ray(rc, self.console)
            self.stops.install()  # ray.init replaced the SIGTERM handler

    def _spawn_workers(self) -> None:
        """Reward worker, learner, rollout workers. Reward and reference workers are stateless: Ray restarts them
        and retries the call itself. Rollout workers restart when they die; they are then sent the current weights
        and their shard is retried (:func:`rlkit.trainer.evaluate.generate`)."""
        from rlkit.workers import RewardWorker
        from rlkit.workers.local import spawn
        from rlkit.workers.rollout import spawn_rollout_workers

        r, rc = self.recipe, self.recipe.ray
        self.reward = spawn(
            RewardWorker,
            dict(num_cpus=rc.cpus_per_reward, max_restarts=3, max_task_retries=3),
            [x.model_dump(exclude_defaults=True) for x in r.rewards],
            inprocess=self.inproc,
        )
        self.learner = self._spawn_learner()
        if self.own_dtype:
            section = "ppo" if self.ppo else "grpo"
            self.console.print(
                f"rollout.dtype {r.rollout.dtype} (model.dtype {r.model.dtype}): the rollout engine samples with its "
                f"own {r.rollout.dtype} copy of the policy, refreshed every step"
                + ("" if self.cfg.tis_cap else f"; set {section}.tis_cap (e.g. 2.0) to correct the sampling mismatch")
            )
        share = (self.learner.instance.model, self.learner.instance.tokenizer) if self.shared else None
        self.rollout_workers = spawn_rollout_workers(
            r, self.policy_path, version=self.start, max_restarts=3, inprocess=self.inproc, share=share
        )

    def _spawn_learner(self):
        from rlkit.config.sections import LearnerLoRAConfig
        from rlkit.workers import Learner, PPOLearner
        from rlkit.workers.local import spawn

        r, rc = self.recipe, self.recipe.ray
        kw = dict(
            temperature=r.rollout.temperature,
            dtype=r.model.dtype,
            seed=r.seed,
            torch_threads=rc.torch_threads,
            attn_implementation=r.model.attn_implementation,
        )
        if r.model.lora is not None:  # the learner trains adapters over the initial policy and serves "initial"
            kw["lora"] = LearnerLoRAConfig(
                **r.model.lora.model_dump(), base_path=self.init_paths[0], kl_to_initial=r.eval.kl_to_initial
            )
        if r.learner.num_workers > 1:  # N ranks behind the same calls; rank 0 returns weights and checkpoints
            from rlkit.workers.learner_group import LearnerGroup

            return LearnerGroup(
                r.learner.num_workers, self.policy_path, self.cfg, r.regularizers, num_cpus=rc.cpus_per_learner, **kw
            )
        return spawn(
            PPOLearner if self.ppo else Learner,
            dict(num_cpus=rc.cpus_per_learner),
            self.policy_path,
            self.cfg,
            r.regularizers,
            inprocess=self.inproc,
            **kw,
        )

    def _spawn_references(self) -> None:
        """The :class:`ReferencePlan` from the learner's needs, its reference workers, the weight sync."""
        from rlkit.workers import ReferenceWorker
        from rlkit.workers.local import spawn

        r, rc = self.recipe, self.recipe.ray
        self.needs = get(self.learner.needs.remote())
        self.plan = ReferencePlan.from_needs(self.needs, r.eval.kl_to_initial)
        self.references = {}
        for key in self.plan.spawned:
            src = resolve_reference(self.plan.specs[key], self.init_paths, self.out, self.prepared)
            self.references[key] = spawn(
                ReferenceWorker,
                dict(num_cpus=rc.cpus_per_reference, max_restarts=3, max_task_retries=3),
                src.kind,
                src.paths,
                src.weights,
                dtype=r.model.dtype,
                temperature=r.rollout.temperature,
                torch_threads=rc.torch_threads,
                name=key,
                shared_prefix=self.cfg.shared_prefix,
                load_options=src.options,
                attn_implementation=r.model.attn_implementation,
                inprocess=self.inproc,
            )
        self.sync: WeightSync = make_weight_sync(
            self.shared,
            r.learner.num_workers > 1,
            self.learner,
            self.rollout_workers,
            self.references,
            self.plan,
            self.start,
            inprocess=self.inproc,
        )

    def initial_reference(self):
        """The worker serving the initial policy's log-probs (a LoRA learner serves them itself), or None."""
        source = self.plan.initial_source()
        return self.references["initial"] if source == "worker" else self.learner if source == "learner" else None

    def _prepare_eval(self) -> None:
        n = self.recipe.eval.num_prompts
        self.eval_prompts = [r["prompt"] for r in self.evalset][:n]
        self.eval_answers = [r["answer"] for r in self.evalset][:n]
        self.eval_ids = self.encode(self.eval_prompts)

    def run_eval(self) -> dict:
        """The held-out evaluation with the current weights (:func:`rlkit.trainer.evaluate.evaluate`)."""
        r, ev = self.recipe, self.recipe.eval
        return evaluate(
            self.rollout_workers,
            self.reward,
            self.eval_prompts,
            self.eval_ids,
            self.eval_answers,
            ev.n_samples,
            ev.ks,
            ev.temperature,
            r.rollout.max_new_tokens,
            seed=r.seed + 10_000,
            reference=self.initial_reference(),
            on_restart=self.sync.resend,
            version=self.sync.version,
        )

    def _restore_or_begin(self) -> None:
        """Resume: the learner's state, the data position and the evaluation before from the checkpoint. Else the
        evaluation before. Rehearsal: the pre-sampled split either way (GRPO then draws from D_exp only)."""
        r, ev = self.recipe, self.recipe.eval
        driver = get(self.learner.load_training_state.remote(str(self.resume_from))) if self.resume_from else None
        self.reh = self._prepare_rehearsal(resume=driver is not None)
        indices = range(len(self.train_rows)) if self.reh is None else self.reh.explore
        self.stream = PromptStream(self.train_rows, list(indices), self.cfg.prompts_per_step, r.seed)
        if driver:
            self._restore_references()
            self.eval_before = driver["eval_before"]
            self.stream.restore(driver["order"], driver["cursor"], driver["py_random"])
            truncate_metrics(self.out / "metrics.jsonl", self.start)  # steps after the checkpoint are redone
            self.console.print(f"resumed from {self.resume_from} at step {self.start}")
            return
        self.eval_before = self.run_eval() if ev.before else None
        if self.eval_before:
            e, k = self.eval_before, ev.ks[-1]
            self.console.print(
                f"eval before: pass@1 {e['pass@1']:.3f} | pass@{k} {e[f'pass@{k}']:.3f} | "
                f"greedy {e['greedy_accuracy']:.3f}"
            )

    def _prepare_rehearsal(self, resume: bool):
        """DPH-RL rehearsal: the split pre-sampled by the initial policy (:mod:`rlkit.trainer.rehearsal`)."""
        r, g = self.recipe, self.cfg
        if r.rehearsal is None:
            return None
        from .rehearsal import default_responses_per_step, prepare_rehearsal

        reh = prepare_rehearsal(
            r,
            self.out,
            self.train_rows,
            self.encode,
            self.rollout_workers,
            self.reward,
            self.initial_reference(),
            self.init_paths[0],
            resume=resume,
            console=self.console,
            on_restart=self.sync.resend,
            version=self.sync.version,
        )
        self.reh_per_step = r.rehearsal.responses_per_step or default_responses_per_step(
            g.prompts_per_step, g.group_size
        )
        if len(reh.explore) < g.prompts_per_step:
            raise TrainingError(
                f"rehearsal: only {len(reh.explore)} training prompts are left for exploration "
                f"(D_exp), fewer than grpo.prompts_per_step={g.prompts_per_step}"
            )
        return reh

    # ------------------------------------------------------------------------------------------------ the loop
    def fit(self) -> None:
        """Train from the start (or resume) step to ``steps``: rollout -> score -> reference -> train -> sync ->
        log / checkpoint."""
        self.t_loop = time.time()
        with self._metrics_logger() as self.logger:
            self.prefetch = Prefetch() if self.cfg.async_rollout else None
            if self.reh is not None and self.start == 0:
                self.logger.log(0, self.reh.metrics())
            self.stops.in_loop, self.stops.step = True, self.start
            for step in range(self.start, self.cfg.steps):
                t_start = time.time()
                batch = self.next_batch(step)  # rollout -> score -> reference (or the prefetched batch)
                t_wait = time.time() - t_start
                if self.prefetch is not None and step + 1 < self.cfg.steps:
                    self.prefetch.submit(self.prepare, self.stream.draw(), step + 1, self.sync.version, self.plan.fixed)
                metrics = self.train(step, batch)
                self.sync.after_step(step + 1)
                self.log(step, batch, metrics, time.time() - t_start, t_wait)
                self.checkpoint(step)
            self.stops.in_loop = False

    def _metrics_logger(self):
        from rlkit.utils.metrics import metrics_logger

        r, needs = self.recipe, self.needs
        progress_keys = (
            "reward",
            *(f"{label}/value" for label in needs.labels),
            *(f"rehearsal/{label}/value" for label in needs.rehearsal),
            "kl_initial/k3",
            "entropy",
        )
        return metrics_logger(
            self.out,
            r.logging,
            config=r.model_dump(mode="json"),
            progress_total=self.cfg.steps,
            progress_keys=progress_keys,
        )

    def next_batch(self, step: int) -> StepBatch:
        """This step's batch: the prefetched one (its refreshing references score it now, after the refresh that
        preceded this step), or one prepared now with every reference."""
        if self.prefetch is not None and self.prefetch.pending is not None:
            batch = self.prefetch.take()
            late = sorted(set(self.references) - set(batch.refs))
            batch.refs.update(self.reference(batch.rollout, late))
            return batch
        return self.prepare(self.stream.draw(), step, self.sync.version, self.plan.spawned)

    def prepare(self, rows: list[dict], step: int, version: int, keys) -> StepBatch:
        """Rollout, score and the ``keys`` references of a step's prompts (in the prefetch thread with async
        rollouts); the reward worker scores while the reference workers run."""
        t = time.time()
        rollout = self.rollout(rows, step, version)
        t_gen = time.time() - t
        pending = self.reward.score.remote(rollout.prompts, rollout.texts, rollout.answers)
        refs = self.reference(rollout, keys)
        scored = self.score(pending)
        return StepBatch(rollout, scored, refs, t_gen=t_gen, t_score=time.time() - t - t_gen)

    def rollout(self, rows: list[dict], step: int, version: int) -> RolloutBatch:
        """``group_size`` completions per prompt with weights ``version``, seeded by the step."""
        comps = generate(
            self.rollout_workers,
            self.encode([r["prompt"] for r in rows]),
            {**self.sampling, "seed": self.recipe.seed * 100_003 + step},
            on_restart=self.sync.resend,
            version=version,
        )
        return RolloutBatch.from_completions(rows, comps, self.cfg.group_size)

    def score(self, pending) -> ScoredBatch:
        """The reward worker's answer (``pending``: its call on the step's completions)."""
        scored = get(pending)
        return ScoredBatch(
            totals=scored["totals"],
            components=scored["components"],
            failures=scored.get("failures", {}),
            correct=correctness(scored["components"]),
            worker_restarts=scored.get("restarts", 0),
        )

    def reference(self, rollout: RolloutBatch, keys) -> dict[str, ReferenceOutput]:
        """The outputs of references ``keys`` on the completions, each in the form the plan says; the calls run at
        the same time in their actors."""
        send = self.plan.sends
        futures = {
            k: self.references[k].compute.remote(
                rollout.prompt_ids, rollout.completion_ids, send(k) == "logits", hidden=send(k) == "hidden"
            )
            for k in keys
        }
        return {k: ReferenceOutput.from_dict(get(f)) for k, f in futures.items()}

    def train(self, step: int, batch: StepBatch) -> dict:
        """One learner step on the batch (plus the step's rehearsal rows); returns its metrics."""
        self._send_heads(batch.refs)
        ro, scored = batch.rollout, batch.scored
        # rehearsal: stored pi_0 responses, only their divergence is trained on
        rehearsal = self.reh.batch(step, self.reh_per_step, self.recipe.seed) if self.reh is not None else None
        data = TrainBatch(
            step=step,
            prompt_ids=ro.prompt_ids,
            completion_ids=ro.completion_ids,
            scores=scored.totals,
            correct=scored.correct,
            rollout_logprobs=ro.logprobs,
            refs=batch.refs,
            rehearsal=rehearsal,
            group=ro.group,
        )
        return learner_call(self.learner.train_step.remote(data), step, self.out)

    def _send_heads(self, refs: dict[str, ReferenceOutput]) -> None:
        """Hidden-state references: their lm_head goes with the first batch of each version."""
        for k, r in refs.items():
            if r.hidden is not None and self.heads_sent.get(k) != r.head_version:
                r.head = get(self.references[k].head.remote())
                self.heads_sent[k] = r.head_version

    def log(self, step: int, batch: StepBatch, metrics: dict, t_step: float, t_wait: float) -> None:
        metrics.update(batch.scored.metrics())
        metrics.update({"time/step": t_step, "time/generate": batch.t_gen, "time/score": batch.t_score})
        if self.prefetch is not None:  # how long this step waited for its prefetched batch
            metrics["time/wait_rollout"] = t_wait
        self.logger.log(step + 1, metrics)
        self.stops.step = step + 1

    def checkpoint(self, step: int) -> None:
        """A training checkpoint every ``checkpoint.save_every`` steps, and after a signal during the step
        (SIGTERM/SIGINT: then stop, :class:`StopSignals`)."""
        r, stops = self.recipe, self.stops
        if not (stops.received or r.checkpoint.save_every and (step + 1) % r.checkpoint.save_every == 0):
            return
        # the data position before any prefetched batch: a resumed run draws that batch again
        order, cursor, py_random = self.stream.state(
            prefetched=self.prefetch is not None and self.prefetch.pending is not None
        )
        state = {
            "step": step + 1,
            "order": order,
            "cursor": cursor,
            "eval_before": self.eval_before,
            "py_random": py_random,
            "recipe": resume_recipe(r),
        }
        ck_path = self.out / "checkpoints" / f"step_{step + 1:06d}"
        learner_call(self.learner.save.remote(str(ck_path), state, self._refreshed_files()), step, self.out)
        prune_checkpoints(self.out / "checkpoints", r.checkpoint.keep)
        if stops.received:
            if self.prefetch is not None:
                self.prefetch.cancel()
            raise Stop(stops.received, ck_path)

    def _refreshed_files(self) -> dict[str, bytes]:
        """The TR-DPO references' current weights for a checkpoint, ``references/<key>.safetensors`` each."""
        return {reference_file(k): get(self.references[k].weights_file.remote()) for k in self.plan.refreshing}

    def _restore_references(self) -> None:
        """Resume: each TR-DPO reference takes the weights the checkpoint saved for it (its refreshes so far). A
        checkpoint written before rlkit saved them has none: said, and the reference starts from its source."""
        assert self.resume_from is not None  # called on resume only
        for key in self.plan.refreshing:
            file = self.resume_from / reference_file(key)
            if file.is_file():
                get(self.references[key].load_weights_file.remote(file.read_bytes()))
            elif self.start >= self.plan.refresh[key][0]:
                self.console.print(
                    f"warning: {self.resume_from} has no {reference_file(key)} (written by an older rlkit): "
                    f"reference {key!r} restarts from its original weights, without its refreshes so far"
                )

    # ------------------------------------------------------------------------------------------------ the end
    def finish(self) -> dict:
        """The evaluation after, the final checkpoint, ``summary.json``, the before/after table and the plot."""
        from .report import finish_run

        r, out = self.recipe, self.out
        if self.prefetch is not None:
            self.prefetch.close()
        t_loop = time.time() - self.t_loop
        eval_after = self.run_eval()
        final = get(self.learner.save.remote(str(out / "final"))) if r.checkpoint.save_final else None
        summary = {
            "eval_before": self.eval_before,
            "eval_after": eval_after,
            "steps": self.cfg.steps,
            "regularizers": get(self.learner.state.remote()),
            "initial_model": self.init_paths[0],
            "final_checkpoint": final,
            "wall_time_s": time.time() - self.t0,
            "train_time_s": t_loop,
        }
        if self.reh is not None:
            summary["rehearsal"] = {**self.reh.metrics(), "responses_per_step": self.reh_per_step}
        table = (lambda: self._print_table(eval_after)) if self.eval_before else None
        return finish_run(out, summary, self.console, plot=r.logging.plot, table=table)

    def _print_table(self, eval_after: dict) -> None:
        from rlkit.utils.evaluation import print_summary_table

        hide = {"k", "n_samples", "num_prompts", "pass@k"}
        before = {k: v for k, v in self.eval_before.items() if k not in hide}
        after = {k: v for k, v in eval_after.items() if k not in hide}
        title = (
            f"held-out evaluation, {eval_after['num_prompts']} prompts x {eval_after['n_samples']} samples "
            f"(before -> after {self.recipe.algorithm.upper()})"
        )
        print_summary_table(before, after, console=self.console, title=title)
