"""Where an in-process GRPO step's time goes: rollout (model forwards vs the sampling loop around them), scoring,
reference forward, learner forward / backward / optimizer, weight sync.

    python benchmarks/profile_grpo_step.py                                  # medium size, float32 and bf16-mixed
    python benchmarks/profile_grpo_step.py --dtypes float32 --steps 3 --cprofile 20

The job is ``bench_grpo_vs_trl.py``'s (same recipe, same ``medium`` model and prompts; ``--size tiny`` for the
default job's), run in this process with ``ray.mode=inprocess``. Timers wrap the phases from outside (no rlkit
code is changed): ``TransformersEngine.generate`` (rollout), ``RewardWorker.score``, ``ReferenceWorker.compute``,
``Learner.train_step`` and, within them, the policy's ``forward`` (module hooks), ``Tensor.backward`` and the
optimizer's ``step`` (global optimizer hooks), and the weight sync's ``after_step``. The first ``--warmup`` steps
are left out; the table is the mean per step over the rest, with each phase's share of ``time/step``. Nested
phases are reported inside their parent (``rollout: model forwards`` is part of ``rollout``). ``--cprofile N``
also prints the N functions with the most own time (cProfile; it slows Python-heavy code, so the shares of that
run are not the timers').
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench_grpo_vs_trl import build_size, environment, env_line, recipe_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class PhaseTimers:
    """Wall time per phase and step; ``phase`` is a stack so a forward is charged to the phase that called it."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []

    def wrap(self, owner, name: str, label: str) -> None:
        fn = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            timers.stack.append(label)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers.current[label] += time.perf_counter() - t
                timers.stack.pop()

        setattr(owner, name, timed)

    @contextlib.contextmanager
    def sub(self, suffix: str):
        parent = self.stack[-1] if self.stack else "driver"
        t = time.perf_counter()
        try:
            yield
        finally:
            self.current[f"{parent}: {suffix}"] += time.perf_counter() - t

    def end_step(self, step_time: float) -> None:
        self.current["time/step"] = step_time
        self.steps.append(dict(self.current))
        self.current = defaultdict(float)


TIMERS = PhaseTimers()  # one set of wrappers per process (install), reset for every run


def install(timers: PhaseTimers) -> None:
    import torch
    import torch.optim.optimizer as optim_hooks

    from rlkit.rollout.hf import TransformersEngine
    from rlkit.trainer import weight_sync
    from rlkit.workers import Learner, ReferenceWorker, RewardWorker
    from rlkit.workers.local import actor_class

    timers.wrap(TransformersEngine, "generate", "rollout")
    timers.wrap(actor_class(RewardWorker), "score", "scoring")
    timers.wrap(actor_class(ReferenceWorker), "compute", "reference")
    timers.wrap(actor_class(Learner), "train_step", "learner")
    for cls in (weight_sync.SharedModuleSync, weight_sync.ObjectStoreSync, weight_sync.InProcessCopySync):
        timers.wrap(cls, "after_step", "sync")

    backward = torch.Tensor.backward

    def timed_backward(self, *args, **kwargs):
        with timers.sub("backward"):
            return backward(self, *args, **kwargs)

    torch.Tensor.backward = timed_backward
    starts: list[float] = []
    optim_hooks.register_optimizer_step_pre_hook(lambda *a: starts.append(time.perf_counter()))

    def opt_post(*a):
        parent = timers.stack[-1] if timers.stack else "driver"
        timers.current[f"{parent}: optimizer step"] += time.perf_counter() - starts.pop()

    optim_hooks.register_optimizer_step_post_hook(opt_post)

    # every module forward of a causal LM (policy, reference) is timed by a hook on the top-level model
    from transformers import PreTrainedModel

    init = PreTrainedModel.post_init
    fwd = {"depth": 0, "t": 0.0}  # only the outermost forward counts (a CausalLM's inner model is one too)

    def pre(*_):
        if fwd["depth"] == 0:
            fwd["t"] = time.perf_counter()
        fwd["depth"] += 1

    def post(*_):
        fwd["depth"] -= 1
        if fwd["depth"] == 0:
            parent = timers.stack[-1] if timers.stack else "driver"
            timers.current[f"{parent}: model forwards"] += time.perf_counter() - fwd["t"]

    def post_init(self, *a, **k):
        init(self, *a, **k)
        self.register_forward_pre_hook(pre)
        self.register_forward_hook(post)

    PreTrainedModel.post_init = post_init


def profile(a, size: str, dtype: str, work: Path) -> dict:
    from rich.console import Console

    from rlkit.trainer import online
    from rlkit.trainer.grpo import run_grpo

    model_dir, data, info = build_size(size, work / size)
    ns = argparse.Namespace(
        data=data,
        label=f"profile-{dtype}",
        model_dir=model_dir,
        steps=a.steps,
        prompts=a.prompts if size == "medium" else 16,
        group=a.group if size == "medium" else 8,
        max_new_tokens=a.max_new_tokens if size == "medium" else 12,
        threads=a.threads,
        rlkit_set=[f"model.dtype={dtype}", "ray.mode=inprocess", *a.set],
    )
    timers = TIMERS
    timers.steps, timers.current, timers.stack = [], defaultdict(float), []
    log = online.OnlineTrainer.log

    def logged(self, step, batch, metrics, t_step, t_wait):
        timers.end_step(t_step)
        return log(self, step, batch, metrics, t_step, t_wait)

    online.OnlineTrainer.log = logged
    prof = cProfile.Profile() if a.cprofile else None
    try:
        if prof:
            prof.enable()
        run_grpo(recipe_for(ns, work / size), console=Console(soft_wrap=True, quiet=True))
    finally:
        if prof:
            prof.disable()
        online.OnlineTrainer.log = log
    kept = timers.steps[a.warmup :] or timers.steps
    keys = sorted({k for s in kept for k in s}, key=lambda k: (k != "time/step", k))
    mean = {k: sum(s.get(k, 0.0) for s in kept) / len(kept) for k in keys}
    tops = [k for k in keys if k != "time/step" and ": " not in k]
    for top in tops:  # what the timers inside a phase do not cover: Python, loss terms, tokenizing, copies
        if subs := [k for k in keys if k.startswith(top + ": ")]:
            mean[f"{top}: other"] = mean[top] - sum(mean[k] for k in subs)
    mean["driver: other"] = mean["time/step"] - sum(mean[k] for k in tops)
    mean = {k: mean[k] for k in sorted(mean, key=lambda k: (k != "time/step", k.startswith("driver"), k))}
    out = {
        "size": size,
        "dtype": dtype,
        "model": info,
        "steps_kept": len(kept),
        "mean_s": mean,
        "per_step": timers.steps,
    }
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(a.cprofile)
        out["cprofile_top"] = buf.getvalue()
    return out


def table(res: dict) -> list[str]:
    m = res["mean_s"]
    step = m["time/step"]
    lines = ["| phase | s/step | share of step |", "|---|---|---|"]
    for k, v in m.items():
        lines.append(f"| {k} | {v:.3f} | {v / step:.0%} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="medium", choices=("tiny", "medium"))
    p.add_argument("--dtypes", default="float32,bf16-mixed")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra recipe override")
    p.add_argument("--cprofile", type=int, default=0, metavar="N")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--out", default=None, help="JSON (default benchmarks/results/profile_grpo_step.json)")
    a = p.parse_args(argv)
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="profile_grpo_step_")).resolve()
    install(TIMERS)
    results = []
    env = environment()
    print(f"environment: {env_line(env)}")
    for dtype in a.dtypes.split(","):
        res = profile(a, a.size, dtype, work)
        results.append(res)
        print(f"\n{a.size}, {dtype}: mean of {res['steps_kept']} step(s) after {a.warmup} warm-up")
        print("\n".join(table(res)))
        if "cprofile_top" in res:
            print(res["cprofile_top"])
    from _common import write_result

    write_result("profile_grpo_step", {"benchmark": "profile_grpo_step", "environment": env, "runs": results}, a.out)
    return None


if __name__ == "__main__":
    sys.exit(main())
