"""Peak memory of GRPO learner steps: full fine-tuning vs LoRA (peft), same model, same batches.

    python benchmarks/bench_lora_memory.py                              # hidden 512 x 8 layers (~26M params)
    python benchmarks/bench_lora_memory.py --hidden 128 --layers 4 --steps 2   # smoke run with the default tiny model

What runs: rlkit's learner (``LearnerCore``, the code inside the Ray ``Learner`` actor, without Ray) on a tiny Llama
widened to ``--hidden`` / ``--layers`` (the tiny tokenizer), ``--steps`` GRPO steps of ``--prompts`` x ``--group``
completions of ``--completion-len`` tokens, k3 reverse KL toward the initial policy, AdamW.

* ``full``: every weight trained. The initial-policy log-probs come with the batch, as in a real run, where a
  separate ``ReferenceWorker`` process holds a second copy of the weights; that copy is *not* in the learner's
  peak and is reported on its own (``reference copy MB``: the parameter bytes).
* ``lora``: peft adapters (``--r``, alpha 2r, all linear layers); only they get gradients and AdamW state. The
  initial-policy log-probs are computed inside the learner with the adapters disabled (one more no-grad forward),
  so no reference copy exists.

Memory: each mode runs in a fresh subprocess (``--worker``) with ``MALLOC_MMAP_THRESHOLD_=1048576`` (buffers of
1 MiB and more are mapped and unmapped individually, so RSS follows live tensors). The worker imports torch,
transformers and peft, reads the current resident set (``VmRSS``) as the baseline, builds the learner, runs the
steps and reads ``ru_maxrss`` (``getrusage(RUSAGE_SELF)``): ``peak growth`` is the resident-set high-water mark above
the imports (weights, gradients, optimizer state, activations, allocator slack). ``ratio`` is lora / full. Time is
the median step after the first (noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

from _common import max_rss_mb, rss_mb, run_worker, write_result  # noqa: E402  (benchmarks/ is the script's directory)


def make_data(tok, step: int, prompts: int, group: int, length: int, seed: int):
    import random

    rng = random.Random(seed * 1000 + step)
    digits = [tok.convert_tokens_to_ids(c) for c in "0123456789"]
    ps, cs = [], []
    for _ in range(prompts):
        a, b = rng.randrange(50), rng.randrange(50)
        p = tok(f"{a}+{b}=")["input_ids"]
        for _ in range(group):
            ps.append(p)
            cs.append([rng.choice(digits) for _ in range(length)])
    scores = [float(rng.random() < 0.5) for _ in cs]
    from rlkit.types import TrainBatch

    return TrainBatch(
        step=step,
        prompt_ids=ps,
        completion_ids=cs,
        scores=scores,
        correct=[s > 0 for s in scores],
        rollout_logprobs=[[-2.3] * length for _ in cs],
    )


def worker(a) -> dict:
    import peft  # noqa: F401  (imports paid before the baseline)
    import torch
    import transformers  # noqa: F401

    from rlkit.workers.learner import LearnerCore

    torch.set_num_threads(a.threads)
    base = rss_mb()
    grpo = {
        "learning_rate": 1e-4,
        "group_size": a.group,
        "clip_low": 0.2,
        "clip_high": 0.28,
        "aggregation": "token-mean",
    }
    lora = {"r": a.r, "alpha": 2.0 * a.r, "dropout": 0.0, "target_modules": "all-linear"} if a.mode == "lora" else None
    learner = LearnerCore(a.model_dir, grpo, ["kl_k3"], lora=lora)
    after_load = max_rss_mb()
    n_params = sum(p.numel() for p in learner.model.parameters())
    n_train = sum(p.numel() for p in learner.model.parameters() if p.requires_grad)
    times = []
    for step in range(a.steps):
        data = make_data(learner.tokenizer, step, a.prompts, a.group, a.completion_len, a.seed)
        if lora is None:  # in a real run a ReferenceWorker sends these; their values do not change the memory
            from rlkit.types import ReferenceOutput

            data.refs = {
                "initial": ReferenceOutput(logprobs=torch.full((len(data.completion_ids), a.completion_len), -2.3))
            }
        t0 = time.perf_counter()
        learner.train_step(data)
        times.append(time.perf_counter() - t0)
    opt_bytes = sum(
        t.numel() * t.element_size() for s in learner.opt.state.values() for t in s.values() if torch.is_tensor(t)
    )
    return {
        "mode": a.mode,
        "peak_growth_mb": max_rss_mb() - base,
        "load_growth_mb": after_load - base,
        "baseline_mb": base,
        "params": n_params,
        "trainable_params": n_train,
        "optimizer_state_mb": opt_bytes / 2**20,
        "param_mb": n_params * 4 / 2**20,
        "step_s_median": statistics.median(times[1:] or times),
        "step_s": times,
    }


def spawn(a, mode: str, model_dir: str) -> dict:
    return run_worker(
        __file__,
        mode,
        [
            "--model-dir",
            model_dir,
            "--steps",
            str(a.steps),
            "--prompts",
            str(a.prompts),
            "--group",
            str(a.group),
            "--completion-len",
            str(a.completion_len),
            "--r",
            str(a.r),
            "--threads",
            str(a.threads),
            "--seed",
            str(a.seed),
        ],
    )


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--completion-len", type=int, default=16)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return None

    from rlkit.models.tiny import save_tiny

    heads = max(1, a.hidden // 64)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            save_tiny(
                tmp,
                hidden_size=a.hidden,
                intermediate_size=3 * a.hidden,
                num_hidden_layers=a.layers,
                num_attention_heads=heads,
                num_key_value_heads=heads,
            )
        )
        rows = {mode: spawn(a, mode, model_dir) for mode in ("full", "lora")}
    full, lora = rows["full"], rows["lora"]
    ratio = lora["peak_growth_mb"] / full["peak_growth_mb"]
    print(
        f"model: tiny Llama hidden {a.hidden} x {a.layers} layers, {full['params'] / 1e6:.1f}M params; batch "
        f"{a.prompts} x {a.group} completions x {a.completion_len} tokens; {a.steps} steps; {a.threads} thread(s)"
    )
    print(
        f"{'mode':<6}{'trainable':>12}{'optimizer MB':>14}{'peak growth MB':>16}{'reference copy MB':>19}{'step s':>9}"
    )
    for mode, r in rows.items():
        ref = r["param_mb"] if mode == "full" else 0.0
        print(
            f"{mode:<6}{r['trainable_params']:>12,}{r['optimizer_state_mb']:>14.1f}{r['peak_growth_mb']:>16.1f}"
            f"{ref:>19.1f}{r['step_s_median']:>9.2f}"
        )
    system = (lora["peak_growth_mb"]) / (full["peak_growth_mb"] + full["param_mb"])
    print(f"\nlearner peak growth, lora / full: {ratio:.2f}")
    print(f"with full fine-tuning's reference copy counted: {system:.2f}")
    result = {
        "config": vars(a) | {"heads": heads},
        "full": full,
        "lora": lora,
        "ratio_learner_peak": ratio,
        "ratio_with_reference_copy": system,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "memory_method": "ru_maxrss at the end minus VmRSS after the imports, fresh subprocess per mode, "
        "MALLOC_MMAP_THRESHOLD_=1MiB",
    }
    write_result("bench_lora_memory", result, a.out)
    return result


if __name__ == "__main__":
    main()
