"""Weak scaling of a GRPO step: step time vs data-parallel learners and rollout workers.

    python benchmarks/bench_scaling.py                                   # 1x1, 2x1, 1x2, 2x2; 8 steps
    python benchmarks/bench_scaling.py --steps 3 --prompts 2 --group 4   # a smoke run

Each configuration ``LxR`` (``learner.num_workers=L``, ``rollout.num_workers=R``) runs the same job as
``recipes/quickstart.yaml`` without SFT, on the tiny model saved once, with ``--prompts x max(L, R)`` prompts per
step: the work per worker stays constant (weak scaling), so perfect scaling keeps the step time flat. Each
configuration runs ``rlkit.trainer.grpo.run_grpo`` in its own subprocess with a fresh local Ray cluster
(``ray.num_cpus`` = this machine's cores, or the sum of the actors' requests when that is larger). The first
``--warmup`` steps are dropped; the median of the rest is reported for ``time/step`` (rollout, reward, reference,
learner update, weight sync) and ``time/generate`` (rollout only). Against the 1x1 baseline measured in the same
run: ``step/base`` (step time ratio), ``efficiency`` = baseline step time / step time (weak-scaling efficiency:
1.0 is perfect, 1/k is no gain at k times the work) and ``throughput`` = prompts/s over the baseline's (k is
perfect, 1.0 is no gain). Results: ``--out`` (default ``benchmarks/results/bench_scaling.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_result  # noqa: E402  (benchmarks/ is the script's directory)

ROOT = Path(__file__).resolve().parent.parent


def overrides(a, learners: int, rollouts: int, work: Path) -> list[str]:
    prompts = a.prompts * max(learners, rollouts)
    need = learners * a.cpus_per_learner + rollouts * 0.5 + 0.25 + 0.25
    return [
        f"output_dir={work / f'run_{learners}x{rollouts}'}",
        "sft.enabled=false",
        f"model.name_or_path={work / 'tiny-init'}",
        f"grpo.steps={a.steps}",
        f"grpo.prompts_per_step={prompts}",
        f"grpo.group_size={a.group}",
        f"rollout.max_new_tokens={a.max_new_tokens}",
        f"learner.num_workers={learners}",
        f"rollout.num_workers={rollouts}",
        f"ray.cpus_per_learner={a.cpus_per_learner}",
        f"ray.torch_threads={a.threads}",
        f"ray.num_cpus={max(os.cpu_count() or 2, math.ceil(need))}",
        "eval.before=false",
        "eval.kl_to_initial=false",
        "eval.num_prompts=1",
        "eval.n_samples=1",
        "eval.ks=[1]",
        "logging.tensorboard=false",
        "logging.plot=false",
        "checkpoint.save_final=false",
    ]


def worker(a) -> None:
    """One configuration, in this process: run the job, print its step times as one JSON line."""
    from rich.console import Console

    from rlkit.config import load_recipe
    from rlkit.trainer.grpo import run_grpo

    work = Path(a.work_dir)
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", overrides(a, a.learners, a.rollouts, work))
    run_grpo(recipe, console=Console(soft_wrap=True))
    rows = [json.loads(x) for x in (Path(recipe.output_dir) / "metrics.jsonl").read_text().splitlines() if x]
    times = {"step": [r["time/step"] for r in rows], "generate": [r["time/generate"] for r in rows]}
    print("RESULT " + json.dumps(times))


def run_config(a, learners: int, rollouts: int, work: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--learners",
        str(learners),
        "--rollouts",
        str(rollouts),
        "--work-dir",
        str(work),
        *sys.argv[1:],
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}
    log = work / f"log_{learners}x{rollouts}.txt"
    t0 = time.time()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    text = log.read_text()
    found = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not found:
        raise SystemExit(
            f"configuration {learners}x{rollouts} failed (exit {proc.returncode}); log: {log}\n" + text[-2000:]
        )
    times = json.loads(found[-1][len("RESULT ") :])
    keep = lambda xs: xs[a.warmup :] or xs[-1:]  # noqa: E731
    return {
        "learners": learners,
        "rollouts": rollouts,
        "prompts_per_step": a.prompts * max(learners, rollouts),
        "step_s": statistics.median(keep(times["step"])),
        "generate_s": statistics.median(keep(times["generate"])),
        "step_times_s": times["step"],
        "wall_s": time.time() - t0,
        "log": str(log),
    }


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="1x1,2x1,1x2,2x2", help="LxR list (learners x rollout workers); 1x1 first")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prompts", type=int, default=4, help="prompts per step per worker")
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--threads", type=int, default=1, help="torch threads per actor (ray.torch_threads)")
    p.add_argument("--cpus-per-learner", type=float, default=0.5)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--learners", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--rollouts", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a)
        return None
    configs = [tuple(int(x) for x in c.split("x")) for c in a.configs.split(",")]
    if configs[0] != (1, 1):
        configs.insert(0, (1, 1))  # the baseline, measured in the same run
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="rlkit_bench_scaling_"))
    work.mkdir(parents=True, exist_ok=True)
    from rlkit.models.tiny import save_tiny

    save_tiny(work / "tiny-init")
    results = []
    for learners, rollouts in configs:
        print(f"running {learners}x{rollouts} ...", flush=True)
        results.append(run_config(a, learners, rollouts, work))
    base = results[0]
    print(
        f"\n{'config':>7} {'prompts':>7} {'step s':>8} {'gen s':>8} {'step/base':>9} {'efficiency':>10} "
        f"{'throughput':>10}"
    )
    for r in results:
        r["step_ratio"] = r["step_s"] / base["step_s"]
        r["efficiency"] = base["step_s"] / r["step_s"]
        r["throughput"] = r["efficiency"] * r["prompts_per_step"] / base["prompts_per_step"]
        print(
            f"{r['learners']}x{r['rollouts']:<5} {r['prompts_per_step']:>7} {r['step_s']:>8.3f} "
            f"{r['generate_s']:>8.3f} {r['step_ratio']:>9.2f} {r['efficiency']:>10.2f} {r['throughput']:>10.2f}"
        )
    result = {
        "args": {k: v for k, v in vars(a).items() if k not in ("worker", "learners", "rollouts")},
        "cpu_count": os.cpu_count(),
        "work_dir": str(work),
        "results": results,
    }
    write_result("bench_scaling", result, a.out, note=f" (logs in {work})")
    return result


if __name__ == "__main__":
    main()
