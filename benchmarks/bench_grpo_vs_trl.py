"""GRPO step time and peak memory: rlkit's Ray GRPO driver vs TRL's ``GRPOTrainer``, same job on CPU.

    python benchmarks/bench_grpo_vs_trl.py                         # 3 interleaved repeats of every variant
    python benchmarks/bench_grpo_vs_trl.py --sizes tiny --variants rlkit-default,trl-2t --repeats 2 \
        --steps 3 --prompts 2 --group 2                            # a quick smoke run

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
* ``trl``: ``GRPOTrainer`` (``use_vllm=False``, ``use_cpu=True``). Step time = a ``TrainerCallback`` timing
  ``on_step_begin`` -> ``on_step_end`` (generation, reward, reference log-probs, loss, backward, optimizer step).
  Precision: ``trl-default-*`` leave ``bf16`` unset, as a TRL user does; ``GRPOConfig`` then turns it on (TRL 1.x:
  ``bf16`` defaults to ``True`` unless ``fp16`` is set, on CPU too), so TRL's defaults are bfloat16 autocast with
  SDPA attention. ``trl-1t``/``trl-2t`` force float32 (``bf16=False``), ``trl-bf16-*`` set ``bf16=True``. The
  precision each run used (``GRPOConfig.bf16`` after its defaults) is stored with the run.

Each run is a subprocess of its own (this script with ``--worker``; rlkit's actor variant starts its own local Ray
cluster, so the Ray processes and actors are its descendants). The first 2 steps are warm-up; a run's step time is
the median of the rest. Every variant runs ``--repeats`` times (default 3), the variants interleaved round-robin
(v1, v2, ..., v1, v2, ...) so that a slow phase of the host hits all of them; a variant's s/step is the median of its
runs' (with the min and max), its peak memory the median of its runs' peaks, and each ratio against TRL's fastest
median comes with its spread (per round, and the min/max bounds). The environment (library versions, CPU, cores,
torch threads per variant, load average) is printed first and stored; ``--markdown PATH`` writes the tables.
Peak memory: a thread in this (parent) process samples every 0.2 s (``psutil``, else ``/proc``) the summed
RSS of the worker's process tree and keeps the maximum (PSS every 5 s, and at each new high of the summed RSS:
reading it stalls the process); the kernel's per-process high-water mark (``VmHWM``) is summed too, exact for a
one-process run, which a 0.2 s sample can miss the peak of.
This user's ``ray::`` processes outside that tree started
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

from _common import proc_table, read_hwm, read_pss, tree_pids, write_result  # noqa: E402  (benchmarks/ is the script's directory)

ROOT = Path(__file__).resolve().parent.parent
WARMUP_STEPS = 2
#: PSS is read every PSS_EVERY-th memory sample only: reading /proc/<pid>/smaps_rollup every 0.2 s slowed a 2-thread
#: in-process rlkit run 2.5x (the walk holds the process's mmap lock), which made the harness measure itself
PSS_EVERY = 25


class PeakMemory(threading.Thread):
    """Samples the summed RSS/PSS of ``root``'s process tree (+ this user's new ``ray::`` processes outside it when
    ``foreign_ray``; their number is always recorded: ``max_outside``). PSS is read every :data:`PSS_EVERY`-th
    sample and whenever the summed RSS reaches a new high (2% above the last high read), so the PSS peak is taken
    near the RSS peak. ``hwm``: each process's kernel high-water mark (``VmHWM``), summed over every process seen:
    exact for a one-process tree, an upper bound for several (their peaks need not coincide)."""

    def __init__(self, root: int, foreign_ray: bool = False, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.foreign_ray, self.interval, self.since = root, foreign_ray, interval, time.time() - 1.0
        self.peak_rss = self.peak_pss = self.max_procs = self.max_outside = self.samples = 0
        self._pss_at_rss = 0  # the summed RSS when PSS was last read at a new high
        self._hwm: dict[int, int] = {}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        table = proc_table()
        pids = tree_pids(table, self.root)
        outside = {
            pid
            for pid, info in table.items()
            if "ray::" in info["cmdline"] and info["uid"] == os.getuid() and info["start"] >= self.since
        } - pids
        self.max_outside = max(self.max_outside, len(outside))
        pids |= outside if self.foreign_ray else set()
        rss = sum(table[p]["rss"] for p in pids)
        self.peak_rss = max(self.peak_rss, rss)
        for p in pids:
            if (h := read_hwm(p)) is not None:
                self._hwm[p] = max(self._hwm.get(p, 0), h)
        self.samples += 1
        high = rss > 1.02 * self._pss_at_rss
        # smaps_rollup walks the page tables under the target's mmap lock: not at every sample
        if self.samples % PSS_EVERY == 1 or high:
            self._pss_at_rss = max(self._pss_at_rss, rss) if high else self._pss_at_rss
            pss = [read_pss(p) for p in pids]
            if all(v is not None for v in pss):
                self.peak_pss = max(self.peak_pss, sum(pss))
        self.max_procs = max(self.max_procs, len(pids))

    @property
    def peak_hwm(self) -> int:
        return sum(self._hwm.values())

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def recipe_for(a, work: Path):
    from rlkit.config import load_recipe

    data = [f"data.source={a.data}"] if a.data else []
    return load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [
            f"output_dir={work / ('rlkit_run_' + a.label)}",
            "sft.enabled=false",
            f"model.name_or_path={a.model_dir}",
            *data,
            f"grpo.steps={a.steps}",
            f"grpo.prompts_per_step={a.prompts}",
            f"grpo.group_size={a.group}",
            f"rollout.max_new_tokens={a.max_new_tokens}",
            "rollout.engine=transformers",
            "rollout.num_workers=1",
            "regularizers.0.name=kl",
            "regularizers.0.estimator=k3",
            "eval.before=false",
            "eval.kl_to_initial=false",
            "eval.num_prompts=1",
            "eval.n_samples=1",
            "eval.ks=[1]",
            "logging.tensorboard=false",
            "logging.plot=false",
            "checkpoint.save_final=false",
            "regularizers.0.placement=loss",
            f"ray.torch_threads={a.threads}",
            *a.rlkit_set,
        ],
    )


# ----------------------------------------------------------------------------------------------- the two sizes
#: ``medium``: compute, not overhead, dominates: 35M parameters, a 32k vocabulary, 64-token prompts, 64 new tokens.
MEDIUM = dict(
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=6,
    num_attention_heads=6,
    num_key_value_heads=6,
    vocab_size=32000,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
MEDIUM_PROMPT_TOKENS = 64


def medium_tokenizer():
    """A word-level tokenizer over the tiny model's characters plus filler words ``w0 .. wN`` up to 32000 ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rlkit.models.tiny import VOCAB

    vocab = VOCAB + [f"w{i}" for i in range(MEDIUM["vocab_size"] - len(VOCAB))]
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"</?answer>|w\d+|."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def build_size(size: str, work: Path) -> tuple[Path, Path | None, dict]:
    """The model directory both sides start from, the data file (``None``: the quickstart's task) and a summary."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rlkit.config import load_recipe
    from rlkit.models import load_model_and_tokenizer
    from rlkit.models.tiny import BOS_ID, EOS_ID, PAD_ID
    from rlkit.trainer.setup import load_task_data

    model_dir = work / f"{size}-init"
    work.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        model, tokenizer = load_model_and_tokenizer("tiny")
        data = None
    else:
        tokenizer = medium_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(
                LlamaConfig(
                    **MEDIUM, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID, initializer_range=0.02
                )
            )
        # the quickstart's arithmetic prompts behind a context of filler words: MEDIUM_PROMPT_TOKENS tokens each
        train, _ = load_task_data(load_recipe(ROOT / "recipes" / "quickstart.yaml", ["sft.enabled=false"]))
        rng, data = random.Random(0), work / "medium_prompts.jsonl"
        with open(data, "w") as fh:
            for row in train:
                n = MEDIUM_PROMPT_TOKENS - len(tokenizer(row["prompt"])["input_ids"])
                words = "".join(f"w{rng.randrange(MEDIUM['vocab_size'] - 100)}" for _ in range(n))
                fh.write(json.dumps({"prompt": words + row["prompt"], "answer": row["answer"]}) + "\n")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    info = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size,
        "hidden_size": model.config.hidden_size,
        "layers": model.config.num_hidden_layers,
    }
    return model_dir, data, info


def worker_rlkit(a, work: Path) -> dict:
    from rich.console import Console

    from rlkit.trainer.grpo import run_grpo

    # ray.mode=actors: run_grpo starts a fresh local cluster itself (rlkit.trainer.setup.start_ray, address="local",
    # never a cluster already running on the machine), so the benchmark measures rlkit's own Ray start-up
    run_grpo(recipe_for(a, work), console=Console(soft_wrap=True))
    metrics = work / ("rlkit_run_" + a.label) / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
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
    model, tokenizer = load_model_and_tokenizer(a.model_dir)
    if a.trl_attn:  # what model_init_kwargs={"attn_implementation": ...} gives a TRL user
        model.set_attn_implementation(a.trl_attn)
    g = recipe.grpo
    args = GRPOConfig(
        output_dir=str(work / ("trl_run_" + a.label)),
        max_steps=a.steps,
        learning_rate=g.learning_rate,
        lr_scheduler_type="constant",
        weight_decay=g.weight_decay,
        max_grad_norm=g.max_grad_norm or 0.0,
        beta=float(reg.get("coef", 0.001)),
        use_bias_correction_kl=False,
        loss_type="bnpo",
        epsilon=g.clip_low,
        epsilon_high=g.clip_high,
        scale_rewards="group",
        num_iterations=1,
        per_device_train_batch_size=a.prompts * a.group,
        gradient_accumulation_steps=1,
        num_generations=a.group,
        max_completion_length=a.max_new_tokens,
        temperature=recipe.rollout.temperature,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        use_cpu=True,
        **({} if a.trl_bf16 == "unset" else {"bf16": a.trl_bf16 == "true"}),  # unset: TRL's default
        seed=recipe.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
        gradient_checkpointing=a.trl_gradient_checkpointing,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[numeric_match], args=args, train_dataset=dataset, processing_class=tokenizer
    )
    timer = StepTimer()
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(timer)
    trainer.train()
    return {"step_times_s": timer.times, "trl_bf16": bool(args.bf16)}


#: What runs, per size: rlkit as the quickstart comes (``ray.mode: auto``, 2 torch threads, synchronous), rlkit's
#: best settings (one-step-off async rollouts, at 1 and 2 threads) and TRL at 1 and 2 threads; "best" = the fastest.
#: TRL's extras: "fp32" forces bf16=False, "bf16" sets bf16=True, neither leaves it to GRPOConfig (TRL's defaults).
VARIANTS = {
    "rlkit-default": ("rlkit", 2, []),
    "rlkit-actors": ("rlkit", 2, ["ray.mode=actors"]),
    "rlkit-1t": ("rlkit", 1, []),
    "rlkit-async-1t": ("rlkit", 1, ["grpo.async_rollout=true"]),
    "rlkit-async-2t": ("rlkit", 2, ["grpo.async_rollout=true"]),
    "rlkit-bf16-1t": ("rlkit", 1, ["model.dtype=bf16-mixed"]),
    "rlkit-bf16-2t": ("rlkit", 2, ["model.dtype=bf16-mixed"]),
    "rlkit-bf16-async-1t": ("rlkit", 1, ["grpo.async_rollout=true", "model.dtype=bf16-mixed"]),
    "rlkit-bf16-async-2t": ("rlkit", 2, ["grpo.async_rollout=true", "model.dtype=bf16-mixed"]),
    # bfloat16 rollout copy of a float32 learner (rollout.dtype), with TIS for the sampling mismatch
    "rlkit-bf16ro-2t": ("rlkit", 2, ["rollout.dtype=bfloat16", "grpo.tis_cap=2.0"]),
    "rlkit-bf16ro-async-1t": ("rlkit", 1, ["rollout.dtype=bfloat16", "grpo.tis_cap=2.0", "grpo.async_rollout=true"]),
    # eager attention (model.attn_implementation), faster than SDPA at the tiny size's ~20-token sequences on CPU
    "rlkit-eager-2t": ("rlkit", 2, ["model.attn_implementation=eager"]),
    "rlkit-eager-async-1t": ("rlkit", 1, ["model.attn_implementation=eager", "grpo.async_rollout=true"]),
    "rlkit-bf16-eager-2t": ("rlkit", 2, ["model.dtype=bf16-mixed", "model.attn_implementation=eager"]),
    "rlkit-bf16-eager-async-1t": (
        "rlkit",
        1,
        ["model.dtype=bf16-mixed", "model.attn_implementation=eager", "grpo.async_rollout=true"],
    ),
    "trl-default-1t": ("trl", 1, []),  # GRPOConfig's own precision default (bf16 on: TRL 1.x)
    "trl-default-2t": ("trl", 2, []),
    "trl-1t": ("trl", 1, ["fp32"]),  # bf16=False: float32, not TRL's default
    "trl-2t": ("trl", 2, ["fp32"]),
    "trl-bf16-1t": ("trl", 1, ["bf16"]),  # GRPOConfig(bf16=True): accelerate's bf16 autocast
    "trl-bf16-2t": ("trl", 2, ["bf16"]),
    "trl-eager-2t": ("trl", 2, ["eager"]),
    "trl-bf16-eager-2t": ("trl", 2, ["bf16", "eager"]),
}


def run_side(a, label: str, work: Path, model_dir: Path, data: Path | None, repeat: int = 0) -> dict:
    """Run one variant once in a fresh interpreter while sampling its memory; returns its result with the peaks.
    ``repeat`` names the run's files (``<label>.r<repeat>``), so every repeat starts from a new output directory."""
    side, threads, extra = VARIANTS[label]
    run_id = f"{label}.r{repeat}"
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        side,
        "--label",
        run_id,
        "--work-dir",
        str(work),
        "--model-dir",
        str(model_dir),
        "--steps",
        str(a.steps),
        "--prompts",
        str(a.prompts),
        "--group",
        str(a.group),
        "--max-new-tokens",
        str(a.max_new_tokens),
        "--threads",
        str(threads),
    ]
    cmd += ["--data", str(data)] if data else []
    cmd += ["--trl-gradient-checkpointing"] if a.trl_gradient_checkpointing else []
    cmd += [f"--rlkit-set={kv}" for kv in [*extra, *a.rlkit_set]] if side == "rlkit" else []
    if side == "trl":
        cmd += ["--trl-bf16=" + ("true" if "bf16" in extra else "false" if "fp32" in extra else "unset")]
    cmd += ["--trl-attn=eager"] if side == "trl" and "eager" in extra else []
    log = work / f"{run_id}.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
        mem = PeakMemory(proc.pid, foreign_ray=a.count_foreign_ray)
        mem.start()
        rc = proc.wait()
        mem.stop()
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{label} worker failed (rc {rc}); log {log}:\n{tail}")
    res = json.loads((work / f"{run_id}.json").read_text())
    times = res["step_times_s"][WARMUP_STEPS:] or res["step_times_s"]
    res.update(
        side=side,
        threads=threads,
        overrides=extra,
        repeat=repeat,
        median_step_s=statistics.median(times),
        steps_timed=len(times),
        process_wall_s=time.perf_counter() - t0,
        peak_rss_mb=mem.peak_rss / 2**20,
        peak_pss_mb=(mem.peak_pss / 2**20) or None,
        peak_hwm_mb=(mem.peak_hwm / 2**20) or None,
        max_processes=mem.max_procs,
        max_ray_outside_tree=mem.max_outside,
        log=str(log),
        loadavg_after=_loadavg(),
    )
    return res


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def aggregate(label: str, repeats: list[dict]) -> dict:
    """One variant over its repeats: the median (and min, max) of the per-run median step times, median peaks."""
    step = [r["median_step_s"] for r in repeats]
    pss = [r["peak_pss_mb"] for r in repeats if r["peak_pss_mb"]]
    hwm = [r["peak_hwm_mb"] for r in repeats if r.get("peak_hwm_mb")]
    first = repeats[0]
    return {
        "side": first["side"],
        "threads": first["threads"],
        "overrides": first["overrides"],
        "trl_bf16": first.get("trl_bf16"),
        "repeats": len(repeats),
        "median_step_s": statistics.median(step),
        "min_step_s": min(step),
        "max_step_s": max(step),
        "step_s_per_repeat": step,
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in repeats),
        "peak_pss_mb": statistics.median(pss) if len(pss) == len(repeats) else None,
        "peak_hwm_mb": statistics.median(hwm) if len(hwm) == len(repeats) else None,
        "max_processes": max(r["max_processes"] for r in repeats),
        "max_ray_outside_tree": max(r["max_ray_outside_tree"] for r in repeats),
        "runs": repeats,
    }


def summarize(runs: dict[str, dict]) -> dict:
    """Ratios of rlkit's default placement and rlkit's fastest variant against two TRL baselines: TRL's fastest
    variant of the run (``trl_best``: every setting tried, e.g. bf16 + eager attention) and TRL as it comes at its
    fastest thread setting (``vs_trl_defaults``: the fastest ``trl-default-*`` variant, when the run has one).

    ``step_time`` is median / median. Its spread is given two ways: ``step_time_paired`` is the min and max over the
    repeats of rlkit's time over TRL's time *in the same round* (the rounds are interleaved, so a slow phase of the
    host hits both); ``step_time_bounds`` is the worst-case pair, rlkit's min / TRL's max and rlkit's max / TRL's
    min."""
    trl = {k: r for k, r in runs.items() if r["side"] == "trl"}
    mine = {k: r for k, r in runs.items() if r["side"] == "rlkit"}
    out = _against(mine, trl)
    defaults = {k: r for k, r in trl.items() if not r["overrides"]}
    if defaults:
        out["vs_trl_defaults"] = _against(mine, defaults)
    return out


def _fastest(runs: dict[str, dict]) -> str:
    return min(runs, key=lambda k: runs[k]["median_step_s"])


def _against(mine: dict[str, dict], trl_runs: dict[str, dict]) -> dict:
    """rlkit-default's and rlkit's fastest ratios against the fastest of ``trl_runs``."""
    trl_label, best_label = _fastest(trl_runs), _fastest(mine)
    trl = trl_runs[trl_label]
    out: dict = {"trl_best": trl_label, "rlkit_best": best_label}
    for name, r in (("default", mine.get("rlkit-default")), ("best", mine[best_label])):
        if r is not None:
            paired = [x / y for x, y in zip(r["step_s_per_repeat"], trl["step_s_per_repeat"])]
            out[name] = {
                "step_time": r["median_step_s"] / trl["median_step_s"],
                "step_time_paired": [min(paired), max(paired)],
                "step_time_bounds": [r["min_step_s"] / trl["max_step_s"], r["max_step_s"] / trl["min_step_s"]],
                "peak_rss": r["peak_rss_mb"] / trl["peak_rss_mb"],
                "peak_pss": (r["peak_pss_mb"] / trl["peak_pss_mb"])
                if r["peak_pss_mb"] and trl["peak_pss_mb"]
                else None,
                "peak_hwm": (r["peak_hwm_mb"] / trl["peak_hwm_mb"])
                if r.get("peak_hwm_mb") and trl.get("peak_hwm_mb")
                else None,
            }
    return out


def environment() -> dict:
    """What the numbers depend on: library versions, the CPU, its cores and how loaded the machine was."""
    import platform

    import torch
    import transformers

    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": platform.processor() or None,
        "loadavg_start": _loadavg(),
    }
    for mod in ("trl", "ray"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    try:
        flags = set()
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                env["cpu_model"] = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
        env["cpu_bf16"] = sorted(f for f in flags if f in ("amx_bf16", "avx512_bf16"))
    except OSError:
        pass
    return env


def env_line(env: dict) -> str:
    bf16 = f" ({', '.join(env['cpu_bf16'])})" if env.get("cpu_bf16") else ""
    return (
        f"torch {env['torch']}, transformers {env['transformers']}, TRL {env['trl']}, Ray {env['ray']}, "
        f"Python {env['python']}; CPU {env['cpu_model']}{bf16}, {env['cpus']} cores ({env['cpus_usable']} "
        f"usable), load average {env['loadavg_start']:.2f} at the start"
    )


def _ratio_text(q: dict) -> str:
    lo, hi = q["step_time_paired"]
    blo, bhi = q["step_time_bounds"]
    pss = f"{q['peak_pss']:.2f}" if q["peak_pss"] else "-"
    hwm = f"{q['peak_hwm']:.2f}" if q.get("peak_hwm") else "-"
    return (
        f"step time {q['step_time']:.2f}x (per round {lo:.2f}-{hi:.2f}x, min/max bounds {blo:.2f}-{bhi:.2f}x), "
        f"peak RSS {q['peak_rss']:.2f}x, peak PSS {pss}x, high-water mark {hwm}x"
    )


def _ratio_lines(ratios: dict) -> list[str]:
    lines = []
    for against, r in (("TRL's fastest variant", ratios), ("TRL's defaults", ratios.get("vs_trl_defaults"))):
        if not r or (against == "TRL's defaults" and r["trl_best"] == ratios["trl_best"]):
            continue  # no trl-default-* variant ran, or it is TRL's fastest too (the lines above)
        for name in ("default", "best"):
            if name in r and not (name == "best" and r["rlkit_best"] == "rlkit-default"):
                label = "rlkit-default" if name == "default" else r["rlkit_best"]
                lines.append(f"{label} / {r['trl_best']} ({against}): {_ratio_text(r[name])}")
    return lines


def size_line(size: str, info: dict, a, repeats: int) -> str:
    return (
        f"{size}: {info['parameters'] / 1e6:.1f}M parameters, vocab {info['vocab_size']}, {a.prompts} prompts x "
        f"{a.group}, {a.max_new_tokens} new tokens, {a.steps} steps (first {WARMUP_STEPS} excluded), "
        f"{repeats} interleaved repeat(s) per variant"
    )


def print_size(size: str, info: dict, a, runs: dict[str, dict], ratios: dict, repeats: int = 1) -> None:
    print("\n" + size_line(size, info, a, repeats))
    print(
        head := f"{'variant':<20} {'threads':>7} {'s/step':>8} {'min-max':>15} {'RSS MB':>8} {'PSS MB':>8} "
        f"{'HWM MB':>8} {'procs':>5}"
    )
    print("-" * len(head))
    for label, r in runs.items():
        pss = f"{r['peak_pss_mb']:.0f}" if r["peak_pss_mb"] else "-"
        hwm = f"{r['peak_hwm_mb']:.0f}" if r.get("peak_hwm_mb") else "-"
        spread = f"{r['min_step_s']:.3f}-{r['max_step_s']:.3f}"
        print(
            f"{label:<20} {r['threads']:>7} {r['median_step_s']:>8.3f} {spread:>15} {r['peak_rss_mb']:>8.0f} "
            f"{pss:>8} {hwm:>8} {r['max_processes']:>5}"
        )
    for line in _ratio_lines(ratios):
        print(line)


def write_markdown(path: Path, result: dict) -> None:
    """The result as a Markdown section: environment, one table per size (medians, min-max), the ratios."""
    env = result["environment"]
    lines = [
        f"# bench_grpo_vs_trl, {result['date']}",
        "",
        f"Environment: {env_line(env)}. Threads per side: the "
        "variant's `threads` column (torch threads per process; rlkit's `ray.torch_threads`).",
        "",
        f"Each variant ran {result['repeats']} time(s), each run a fresh process, the variants interleaved "
        "round-robin. s/step: the median over the runs of each run's median step time (warm-up excluded), "
        "with the min and max; memory: the median over the runs of each run's peak, summed over the "
        "processes. Ratios: median over the named TRL variant's median (TRL's fastest variant, and the fastest "
        "`trl-default-*`: TRL as it comes, bf16 on); per round: the min and max over the rounds "
        "of the ratio within one round; bounds: rlkit's min / TRL's max to rlkit's max / TRL's min.",
        "",
    ]
    for size, sr in result["sizes"].items():
        a = argparse.Namespace(**{k: sr[k] for k in ("prompts", "group", "max_new_tokens", "steps")})
        lines += [
            f"## {size_line(size, sr['model'], a, result['repeats'])}",
            "",
            "| variant | threads | s/step (median) | min-max | peak RSS MB | peak PSS MB | high-water mark MB "
            "| processes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, r in sr["runs"].items():
            pss = f"{r['peak_pss_mb']:.0f}" if r["peak_pss_mb"] else "-"
            hwm = f"{r['peak_hwm_mb']:.0f}" if r.get("peak_hwm_mb") else "-"
            lines.append(
                f"| {label} | {r['threads']} | {r['median_step_s']:.3f} | {r['min_step_s']:.3f}-"
                f"{r['max_step_s']:.3f} | {r['peak_rss_mb']:.0f} | {pss} | {hwm} | {r['max_processes']} |"
            )
        lines += [""] + [f"- {line}" for line in _ratio_lines(sr["ratios_rlkit_over_trl_best"])] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        default="tiny,medium",
        help="comma list of: tiny (the default job's 0.86M model, "
        "12 new tokens), medium (35M parameters, vocab 32000, 64-token prompts, --medium-new-tokens)",
    )
    p.add_argument(
        "--variants",
        default=",".join(k for k in VARIANTS if k != "rlkit-actors"),
        help=f"comma list of {', '.join(VARIANTS)}",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per variant, interleaved round-robin (v1, v2, ..., "
        "v1, v2, ...), each a fresh process; the median is reported with the min and max",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=16, help="prompts per optimizer step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (GRPO group size)")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--medium-steps", type=int, default=6)
    p.add_argument("--medium-prompts", type=int, default=4)
    p.add_argument("--medium-group", type=int, default=4)
    p.add_argument("--medium-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)  # a worker's torch threads
    p.add_argument(
        "--trl-gradient-checkpointing", action="store_true", help="TRL's default; off for a like-for-like run"
    )
    p.add_argument(
        "--count-foreign-ray",
        action="store_true",
        help="also sum this user's 'ray::' processes "
        "outside the worker's tree (started after it): counts other Ray jobs running meanwhile",
    )
    p.add_argument("--work-dir", default=None, help="where models, runs and logs go (default: a new temp dir)")
    p.add_argument("--out", default=None, help="JSON result file (default benchmarks/results/bench_grpo_vs_trl.json)")
    p.add_argument("--markdown", default=None, metavar="PATH", help="also write the tables as Markdown to PATH")
    p.add_argument(
        "--rlkit-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra rlkit recipe override for every rlkit variant (repeatable)",
    )
    p.add_argument("--worker", choices=("rlkit", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--label", default="", help=argparse.SUPPRESS)
    p.add_argument("--trl-bf16", choices=("unset", "true", "false"), default="unset", help=argparse.SUPPRESS)
    p.add_argument("--trl-attn", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if min(a.steps, a.medium_steps) <= WARMUP_STEPS:
        p.error(f"--steps and --medium-steps must be > {WARMUP_STEPS} (the first {WARMUP_STEPS} steps are warm-up)")
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="bench_grpo_vs_trl_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if a.worker:
        fn = {"rlkit": worker_rlkit, "trl": worker_trl}[a.worker]
        (work / f"{a.label}.json").write_text(json.dumps(fn(a, work)))
        return None
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()
    variants = [v for v in a.variants.split(",") if v]
    if bad := [v for v in variants if v not in VARIANTS]:
        p.error(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    env = environment()
    print(f"environment: {env_line(env)}")
    print("threads per side: " + ", ".join(f"{v} {VARIANTS[v][1]}" for v in variants))
    result = {
        "benchmark": "bench_grpo_vs_trl",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": {
            k: v
            for k, v in vars(a).items()
            if k not in ("worker", "label", "model_dir", "data", "threads", "trl_bf16", "trl_attn")
        },
        "warmup_steps": WARMUP_STEPS,
        "repeats": a.repeats,
        "cpus": os.cpu_count(),
        "environment": env,
        "sizes": {},
        "work_dir": str(work),
    }
    for size in a.sizes.split(","):
        sa = argparse.Namespace(**vars(a))
        if size == "medium":
            sa.steps, sa.prompts, sa.group, sa.max_new_tokens = (
                a.medium_steps,
                a.medium_prompts,
                a.medium_group,
                a.medium_new_tokens,
            )
        model_dir, data, info = build_size(size, work / size)
        per_variant: dict[str, list[dict]] = {label: [] for label in variants}
        for i in range(a.repeats):  # round-robin: a slow phase of the host hits every variant alike
            for label in variants:
                print(
                    f"{size}: repeat {i + 1}/{a.repeats}, running {label} ({sa.steps} steps, {sa.prompts} prompts "
                    f"x {sa.group}, {sa.max_new_tokens} new tokens)...",
                    flush=True,
                )
                per_variant[label].append(run_side(sa, label, work / size, model_dir, data, repeat=i))
        runs = {label: aggregate(label, reps) for label, reps in per_variant.items()}
        sides = {r["side"] for r in runs.values()}
        ratios = summarize(runs) if sides == {"rlkit", "trl"} else {}  # a ratio needs both sides in the run
        print_size(size, info, sa, runs, ratios, a.repeats)
        result["sizes"][size] = {
            "model": info,
            "steps": sa.steps,
            "prompts": sa.prompts,
            "group": sa.group,
            "max_new_tokens": sa.max_new_tokens,
            "runs": runs,
            "ratios_rlkit_over_trl_best": ratios,
        }
    result["environment"]["loadavg_end"] = _loadavg()
    write_result("bench_grpo_vs_trl", result, a.out, f" (logs and runs in {work})")
    if a.markdown:
        write_markdown(Path(a.markdown), result)
    return result


if __name__ == "__main__":
    main()
