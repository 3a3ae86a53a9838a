"""GRPO step time and peak memory: rlkit's Ray GRPO driver vs TRL's ``GRPOTrainer``, same job on CPU.

    python benchmarks/bench_grpo_vs_trl.py                         # 20 steps, 16 prompts x 8, 12 new tokens
    python benchmarks/bench_grpo_vs_trl.py --steps 4 --prompts 4 --group 4    # a quick smoke run

The same job on both sides: the tiny model (built once, saved to a directory; TRL reloads its reference model
from that path), the arithmetic ``a+b`` task and its training prompts from ``recipes/quickstart.yaml`` (loaded with
rlkit's own ``load_task_data``), ``--prompts`` prompts x ``--group`` completions per optimizer step,
``--max-new-tokens``, temperature, learning rate (constant), clipping (``clip_low``/``clip_high`` =
TRL ``epsilon``/``epsilon_high``), gradient clipping, one update per batch, a reverse-KL k3 penalty in the loss
with the recipe's coefficient (TRL ``beta``, ``use_bias_correction_kl=False``), token-mean aggregation (TRL
``loss_type="bnpo"``), group-std-scaled advantages, the ``numeric_match`` reward, and ``--threads`` torch threads
per process (rlkit: ``ray.torch_threads``). TRL's ``gradient_checkpointing`` (on by default in ``GRPOConfig``) is
turned off, as rlkit does not recompute activations; ``--trl-gradient-checkpointing`` turns it back on.

* ``rlkit``: ``rlkit.trainer.grpo.run_grpo`` with a recipe = ``recipes/quickstart.yaml`` + overrides (no SFT,
  the saved model, transformers rollout engine, evaluation cut to 1 prompt x 1 sample after training and off
  before, no TensorBoard/plots/final checkpoint). Step time = ``time/step`` from ``metrics.jsonl`` (rollout,
  reward, reference, learner update and weight sync to the rollout workers).
* ``trl``: ``GRPOTrainer`` (``use_vllm=False``, ``use_cpu=True``, ``bf16=False``). Step time = a
  ``TrainerCallback`` timing ``on_step_begin`` -> ``on_step_end`` (generation, reward, reference log-probs, loss,
  backward, optimizer step).

Each side runs in its own subprocess (this script with ``--worker``; rlkit's starts its own local Ray cluster, so
the Ray processes and actors are its descendants). The first 2 steps are warm-up; the median of the rest is
reported. Peak memory: a thread in this (parent) process samples every 0.2 s (``psutil``, else ``/proc``) the summed
RSS of the worker's process tree and keeps the maximum. This user's ``ray::`` processes outside that tree started
after the worker are counted and reported, and summed too with ``--count-foreign-ray`` (they belong to other Ray
jobs on the machine). An RSS sum counts shared pages (e.g. torch's libraries, mapped by every Ray actor) once per
process, so the summed PSS (``/proc/<pid>/smaps_rollup``) is shown too. Results: ``--out`` (default
``benchmarks/results/bench_grpo_vs_trl.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import write_result  # noqa: E402  (benchmarks/ is the script's directory)

ROOT = Path(__file__).resolve().parent.parent
WARMUP_STEPS = 2


def _proc_table() -> dict[int, dict]:
    """``{pid: {ppid, cmdline, rss, start, uid}}`` for every readable process (psutil, else ``/proc``)."""
    table = {}
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil:
        for p in psutil.process_iter(["pid", "ppid", "cmdline", "memory_info", "create_time", "uids"]):
            if (info := p.info)["memory_info"] is not None and info["uids"] is not None:
                table[info["pid"]] = {"ppid": info["ppid"], "cmdline": " ".join(info["cmdline"] or []),
                                      "rss": info["memory_info"].rss, "start": info["create_time"],
                                      "uid": info["uids"].real}
        return table
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    boot = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = open(f"/proc/{name}/stat").read()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            cmd = open(f"/proc/{name}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            rss = int(open(f"/proc/{name}/statm").read().split()[1]) * page
            table[int(name)] = {"ppid": int(fields[1]), "cmdline": cmd, "rss": rss,
                                "start": boot + int(fields[19]) / tick, "uid": os.stat(f"/proc/{name}").st_uid}
        except (OSError, ValueError, IndexError):  # the process ended while being read
            continue
    return table


def _pss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return None


class PeakMemory(threading.Thread):
    """Samples the summed RSS/PSS of ``root``'s process tree (+ this user's new ``ray::`` processes outside it when
    ``foreign_ray``; their number is always recorded: ``max_outside``)."""

    def __init__(self, root: int, foreign_ray: bool = False, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.foreign_ray, self.interval, self.since = root, foreign_ray, interval, time.time() - 1.0
        self.peak_rss = self.peak_pss = self.max_procs = self.max_outside = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, info in table.items():
            children.setdefault(info["ppid"], []).append(pid)
        pids, todo = set(), [self.root]
        while todo:
            pid = todo.pop()
            if pid in table and pid not in pids:
                pids.add(pid)
                todo.extend(children.get(pid, []))
        outside = {pid for pid, info in table.items() if "ray::" in info["cmdline"] and info["uid"] == os.getuid()
                   and info["start"] >= self.since} - pids
        self.max_outside = max(self.max_outside, len(outside))
        pids |= outside if self.foreign_ray else set()
        self.peak_rss = max(self.peak_rss, sum(table[p]["rss"] for p in pids))
        pss = [_pss(p) for p in pids]
        if all(v is not None for v in pss):
            self.peak_pss = max(self.peak_pss, sum(pss))
        self.max_procs = max(self.max_procs, len(pids))

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def recipe_for(a, work: Path):
    from rlkit.config import load_recipe

    return load_recipe(ROOT / "recipes" / "quickstart.yaml", [
        f"output_dir={work / 'rlkit_run'}", "sft.enabled=false", f"model.name_or_path={work / 'tiny-init'}",
        f"grpo.steps={a.steps}", f"grpo.prompts_per_step={a.prompts}", f"grpo.group_size={a.group}",
        f"rollout.max_new_tokens={a.max_new_tokens}", "rollout.engine=transformers", "rollout.num_workers=1",
        "regularizers.0.name=kl", "regularizers.0.estimator=k3", "eval.before=false", "eval.kl_to_initial=false",
        "eval.num_prompts=1", "eval.n_samples=1", "eval.ks=[1]", "logging.tensorboard=false", "logging.plot=false",
        "checkpoint.save_final=false", "regularizers.0.placement=loss", f"ray.torch_threads={a.threads}",
        *a.rlkit_set])


def worker_rlkit(a, work: Path) -> dict:
    from rich.console import Console

    from rlkit.trainer.grpo import run_grpo

    # A fresh local cluster of our own: with address=None, ray.init (and so rlkit's start_ray) joins any Ray cluster
    # already running on this machine. run_grpo then finds Ray initialised and uses this one.
    recipe = recipe_for(a, work)
    actors = recipe.ray.mode == "actors"  # ray.mode=inprocess: no Ray at all
    if actors:
        import ray  # only for the actor placement: an in-process job never imports Ray

        ray.init(address="local", num_cpus=recipe.ray.num_cpus or os.cpu_count() or 2, include_dashboard=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
    run_grpo(recipe, console=Console(soft_wrap=True))
    if actors:
        ray.shutdown()
    rows = [json.loads(line) for line in (work / "rlkit_run" / "metrics.jsonl").read_text().splitlines() if line]
    return {"step_times_s": [r["time/step"] for r in rows]}


def worker_trl(a, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reward_models import NumericMatch
    from rlkit.models import load_model_and_tokenizer
    from rlkit.trainer.setup import load_task_data

    recipe = recipe_for(a, work)
    reg = recipe.regularizers[0]
    train, _ = load_task_data(recipe)  # the very prompts rlkit trains on
    dataset = Dataset.from_list(train)
    reward = NumericMatch()

    def numeric_match(prompts, completions, answer, **kwargs):
        return reward(prompts, completions, answer)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)

    torch.set_num_threads(a.threads)
    torch.manual_seed(recipe.seed)
    model, tokenizer = load_model_and_tokenizer(work / "tiny-init")
    g = recipe.grpo
    args = GRPOConfig(
        output_dir=str(work / "trl_run"), max_steps=a.steps, learning_rate=g.learning_rate,
        lr_scheduler_type="constant", weight_decay=g.weight_decay, max_grad_norm=g.max_grad_norm or 0.0,
        beta=float(reg.get("coef", 0.001)), use_bias_correction_kl=False, loss_type="bnpo",
        epsilon=g.clip_low, epsilon_high=g.clip_high, scale_rewards="group", num_iterations=1,
        per_device_train_batch_size=a.prompts * a.group, gradient_accumulation_steps=1, num_generations=a.group,
        max_completion_length=a.max_new_tokens, temperature=recipe.rollout.temperature, top_p=1.0, top_k=0,
        use_vllm=False, use_cpu=True, bf16=False, seed=recipe.seed, logging_steps=1, save_strategy="no",
        report_to=[], dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=a.trl_gradient_checkpointing,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[numeric_match], args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    timer = StepTimer()
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(timer)
    trainer.train()
    return {"step_times_s": timer.times}


def run_side(a, side: str, work: Path) -> dict:
    """Run one side in a fresh interpreter while sampling its memory; returns its result with the peaks."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--work-dir", str(work), "--steps",
           str(a.steps), "--prompts", str(a.prompts), "--group", str(a.group), "--max-new-tokens",
           str(a.max_new_tokens), "--threads", str(a.threads)]
    cmd += ["--trl-gradient-checkpointing"] if a.trl_gradient_checkpointing else []
    cmd += [f"--rlkit-set={kv}" for kv in a.rlkit_set]
    log = work / f"{side}.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        mem = PeakMemory(proc.pid, foreign_ray=a.count_foreign_ray)
        mem.start()
        rc = proc.wait()
        mem.stop()
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{side} worker failed (rc {rc}); log {log}:\n{tail}")
    res = json.loads((work / f"{side}.json").read_text())
    times = res["step_times_s"][WARMUP_STEPS:] or res["step_times_s"]
    res.update(median_step_s=statistics.median(times), steps_timed=len(times), process_wall_s=time.perf_counter() - t0,
               peak_rss_mb=mem.peak_rss / 2**20, peak_pss_mb=(mem.peak_pss / 2**20) or None,
               max_processes=mem.max_procs, max_ray_outside_tree=mem.max_outside, log=str(log))
    return res


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=16, help="prompts per optimizer step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (GRPO group size)")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--threads", type=int, default=2, help="torch threads per process (rlkit: ray.torch_threads)")
    p.add_argument("--trl-gradient-checkpointing", action="store_true", help="TRL's default; off for a like-for-like run")
    p.add_argument("--count-foreign-ray", action="store_true", help="also sum this user's 'ray::' processes "
                   "outside the worker's tree (started after it): counts other Ray jobs running meanwhile")
    p.add_argument("--work-dir", default=None, help="where models, runs and logs go (default: a new temp dir)")
    p.add_argument("--out", default=None, help="JSON result file (default benchmarks/results/bench_grpo_vs_trl.json)")
    p.add_argument("--rlkit-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra rlkit recipe override, e.g. grpo.async_rollout=true (repeatable; TRL has no equivalent)")
    p.add_argument("--worker", choices=("rlkit", "trl"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.steps <= WARMUP_STEPS:
        p.error(f"--steps must be > {WARMUP_STEPS} (the first {WARMUP_STEPS} steps are warm-up)")
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="bench_grpo_vs_trl_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if a.worker:
        fn = {"rlkit": worker_rlkit, "trl": worker_trl}[a.worker]
        (work / f"{a.worker}.json").write_text(json.dumps(fn(a, work)))
        return None
    from transformers.utils.logging import disable_progress_bar

    from rlkit.models import load_model_and_tokenizer  # the one model both sides start from

    disable_progress_bar()
    for part in load_model_and_tokenizer("tiny"):  # model, tokenizer
        part.save_pretrained(work / "tiny-init")
    sides = {}
    for side in ("rlkit", "trl"):
        print(f"running {side} ({a.steps} steps, {a.prompts} prompts x {a.group}, {a.max_new_tokens} new tokens)...",
              flush=True)
        sides[side] = run_side(a, side, work)
    r, t = sides["rlkit"], sides["trl"]
    ratios = {"step_time": r["median_step_s"] / t["median_step_s"], "peak_rss": r["peak_rss_mb"] / t["peak_rss_mb"],
              "peak_pss": (r["peak_pss_mb"] / t["peak_pss_mb"]) if r["peak_pss_mb"] and t["peak_pss_mb"] else None}
    print(f"\nGRPO, {a.prompts} prompts x {a.group} completions, {a.max_new_tokens} new tokens, {a.steps} steps "
          f"(first {WARMUP_STEPS} excluded); ratio = rlkit / TRL")
    print(head := f"{'metric':<24} {'rlkit':>10} {'TRL':>10} {'ratio':>7}")
    print("-" * len(head))
    for name, key, ratio, fmt in (("median step time (s)", "median_step_s", "step_time", ".3f"),
                                  ("peak RSS, summed (MB)", "peak_rss_mb", "peak_rss", ".0f"),
                                  ("peak PSS, summed (MB)", "peak_pss_mb", "peak_pss", ".0f")):
        if ratios[ratio] is not None:
            print(f"{name:<24} {r[key]:>10{fmt}} {t[key]:>10{fmt}} {ratios[ratio]:>7.3f}")
    print(f"{'processes (max)':<24} {r['max_processes']:>10} {t['max_processes']:>10}   ('ray::' processes outside the"
          f" tree: {r['max_ray_outside_tree']}, {'counted' if a.count_foreign_ray else 'not counted'})")
    print(f"{'process wall time (s)':<24} {r['process_wall_s']:>10.1f} {t['process_wall_s']:>10.1f}")
    result = {"benchmark": "bench_grpo_vs_trl", "config": {k: v for k, v in vars(a).items() if k != "worker"},
              "warmup_steps": WARMUP_STEPS, "cpus": os.cpu_count(), "results": sides, "ratios_rlkit_over_trl": ratios,
              "work_dir": str(work)}
    write_result("bench_grpo_vs_trl", result, a.out, f" (logs and runs in {work})")
    return result


if __name__ == "__main__":
    main()
