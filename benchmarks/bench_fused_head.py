"""Peak memory and time of GRPO learner steps: ``grpo.fused_head`` (no ``[B, T, V]`` logits) vs the logits path.

    python benchmarks/bench_fused_head.py                                                # V=32000, 16 x 256 tokens
    python benchmarks/bench_fused_head.py --vocab 4096 --completion-len 32 --steps 1     # smoke run
    python benchmarks/bench_fused_head.py --regularizer forward_kl                       # + exact forward KL

What runs: rlkit's learner (``LearnerCore``, the code inside the Ray ``Learner`` actor, without Ray) on a tiny Llama
widened to ``--hidden`` / ``--layers`` with a real-size vocabulary ``--vocab`` (tied embeddings), ``--steps`` GRPO
steps on ``--batch`` completions of ``--completion-len`` random tokens (groups of ``--group``), AdamW, one update per
step. ``--regularizer kl_k3``: k3 reverse KL toward the initial policy from its log-probs; ``forward_kl``: the
exact forward KL over the vocabulary, with reference logits ``[B, T, V]`` (float32) in the batch, as a
``ReferenceWorker`` sends them. Variants: ``baseline`` (``fused_head: false``: ``[B, T, V]`` logits, their
log-softmax gather, entropy and, for forward KL, ``f_divergence`` on them, plus their float32 gradient) and
``fused`` (``fused_head: true``: :mod:`rlkit.models.fused_head`, chunks of 256 positions).

Memory: each variant runs in a fresh subprocess (``--worker``) with ``MALLOC_MMAP_THRESHOLD_=1048576`` (buffers of
1 MiB and more are mapped and unmapped individually, so RSS follows live tensors). The worker imports torch,
transformers and peft, builds the batches (the reference logits included: an input both variants receive), reads
``VmRSS`` as the baseline, builds the learner, runs the steps and reads ``ru_maxrss``: ``peak growth`` is the
resident-set high-water mark above the inputs (weights, gradients, AdamW state, activations, logits or chunks).
``ratio`` is fused / baseline. Time is the median step after the first (noisy on a shared machine). The parent also
reports the largest relative difference between the two variants' step metrics (same data, same seed).
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


def make_data(a, step: int, ref_logits):
    import torch

    g = torch.Generator().manual_seed(a.seed * 1000 + step)
    n_prompts = a.batch // a.group
    prompts = [
        p for p in torch.randint(6, a.vocab, (n_prompts, a.prompt_len), generator=g).tolist() for _ in range(a.group)
    ]
    comps = torch.randint(6, a.vocab, (a.batch, a.completion_len), generator=g).tolist()
    scores = [float(s) for s in (torch.rand(a.batch, generator=g) < 0.5).tolist()]
    from rlkit.types import ReferenceOutput, TrainBatch

    ref = ReferenceOutput(logprobs=-torch.rand(a.batch, a.completion_len, generator=g) * 3 - 8, logits=ref_logits)
    return TrainBatch(
        step=step,
        prompt_ids=prompts,
        completion_ids=comps,
        scores=scores,
        correct=[s > 0 for s in scores],
        rollout_logprobs=[[-10.0] * a.completion_len for _ in comps],
        refs={"initial": ref},
    )


def regularizers(name: str) -> list:
    return ["kl_k3"] if name == "kl_k3" else [{"name": "forward_kl", "mode": "exact", "reference": "initial"}]


def worker(a) -> dict:
    import peft  # noqa: F401  (imports paid before the baseline)
    import torch
    import transformers  # noqa: F401

    from rlkit.workers.learner import LearnerCore

    torch.set_num_threads(a.threads)
    ref_logits = None
    if a.regularizer == "forward_kl":  # one [B, T, V] tensor shared by the steps: an input of both variants
        ref_logits = torch.randn(a.batch, a.completion_len, a.vocab, generator=torch.Generator().manual_seed(1))
    data = [make_data(a, step, ref_logits) for step in range(a.steps)]
    base = rss_mb()
    grpo = {
        "learning_rate": 1e-5,
        "group_size": a.group,
        "clip_low": 0.2,
        "clip_high": 0.28,
        "aggregation": "token-mean",
        "fused_head": a.mode == "fused",
    }
    learner = LearnerCore(a.model_dir, grpo, regularizers(a.regularizer), seed=a.seed)
    after_load = max_rss_mb()
    times, metrics = [], []
    for d in data:
        t0 = time.perf_counter()
        metrics.append(learner.train_step(d))
        times.append(time.perf_counter() - t0)
    return {
        "mode": a.mode,
        "peak_growth_mb": max_rss_mb() - base,
        "load_growth_mb": after_load - base,
        "baseline_mb": base,
        "fused_active": bool(learner._fused_ok),
        "params": sum(p.numel() for p in learner.model.parameters()),
        "ref_logits_mb": 0.0 if ref_logits is None else ref_logits.numel() * 4 / 2**20,
        "step_s_median": statistics.median(times[1:] or times),
        "step_s": times,
        "metrics": metrics,
    }


def spawn(a, mode: str, model_dir: str) -> dict:
    args = ["--model-dir", model_dir]
    for k in ("vocab", "batch", "group", "prompt_len", "completion_len", "steps", "threads", "seed", "regularizer"):
        args += [f"--{k.replace('_', '-')}", str(getattr(a, k))]
    return run_worker(__file__, mode, args)


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--completion-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--regularizer", choices=["kl_k3", "forward_kl"], default="kl_k3")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["baseline", "fused"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return None
    if a.batch % a.group:
        p.error(f"--batch {a.batch} must be a multiple of --group {a.group}")

    from rlkit.models.tiny import save_tiny

    heads = max(1, a.hidden // 64)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            save_tiny(
                tmp,
                vocab_size=a.vocab,
                hidden_size=a.hidden,
                intermediate_size=3 * a.hidden,
                num_hidden_layers=a.layers,
                num_attention_heads=heads,
                num_key_value_heads=heads,
                max_position_embeddings=max(256, a.prompt_len + a.completion_len),
            )
        )
        rows = {mode: spawn(a, mode, model_dir) for mode in ("baseline", "fused")}
    base, fused = rows["baseline"], rows["fused"]
    ratio = fused["peak_growth_mb"] / base["peak_growth_mb"]
    time_ratio = fused["step_s_median"] / base["step_s_median"]
    diff = max(
        abs(f[k] - b[k]) / max(abs(b[k]), 1e-4)
        for b, f in zip(base["metrics"], fused["metrics"])
        for k in b
        if not k.startswith("time")
    )
    logits_mb = a.batch * a.completion_len * a.vocab * 4 / 2**20
    print(
        f"model: tiny Llama V={a.vocab} hidden {a.hidden} x {a.layers} layers, {base['params'] / 1e6:.1f}M params; "
        f"batch {a.batch} x {a.completion_len} tokens; regularizer {a.regularizer}; {a.steps} steps; "
        f"{a.threads} thread(s)"
    )
    print(
        f"one float32 [B, T, V]: {logits_mb:.1f} MB; reference logits input: {base['ref_logits_mb']:.1f} MB "
        "(an input of both variants)"
    )
    print(f"{'variant':<10}{'peak growth MB':>16}{'load MB':>10}{'step s':>9}")
    for mode, r in rows.items():
        print(f"{mode:<10}{r['peak_growth_mb']:>16.1f}{r['load_growth_mb']:>10.1f}{r['step_s_median']:>9.2f}")
    print(f"\npeak growth, fused / baseline: {ratio:.2f}; step time, fused / baseline: {time_ratio:.2f}")
    print(f"largest relative difference of the step metrics: {diff:.1e}; fused path active: {fused['fused_active']}")
    result = {
        "config": vars(a) | {"heads": heads},
        "baseline": base,
        "fused": fused,
        "ratio_peak": ratio,
        "ratio_time": time_ratio,
        "max_rel_metric_diff": diff,
        "logits_mb": logits_mb,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "memory_method": "ru_maxrss at the end minus VmRSS after the imports and inputs, fresh subprocess per "
        "variant, MALLOC_MMAP_THRESHOLD_=1MiB",
    }
    write_result("bench_fused_head", result, a.out)
    return result


if __name__ == "__main__":
    main()
