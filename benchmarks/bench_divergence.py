"""Exact full-vocabulary divergences, forward + backward: rlkit's chunked divergences vs a naive version.

    python benchmarks/bench_divergence.py                       # V=32000, T in 512..4096, float32, CPU
    python benchmarks/bench_divergence.py --seq-lens 128 --vocab 4096 --repeats 1 --hidden-size 64   # smoke run

What is compared, for each input mode (``--input``), divergence (forward KL, JS, reverse KL) and length ``T``:

* ``naive``: written here, the textbook way: ``log_softmax`` of the policy and of the reference logits over the
  whole ``[B, T, V]`` tensor, the exact sum over the vocabulary, ``.sum().backward()``. Autograd keeps every
  ``[B, T, V]`` intermediate alive until the backward pass.
* ``rlkit``: with ``--input logits``, ``rlkit.functional.f_divergence(..., chunk_size=--chunk)`` with a frozen
  reference: the fused path, which computes value and closed-form gradient chunk by chunk in one pass (no
  recomputation in backward). With ``--input hidden``, ``rlkit.functional.linear_f_divergence(hidden, weight, ref,
  chunk_size=--chunk, reduction="sum")`` (the naive side's ``.sum()``): the policy logits are computed from the
  hidden states one chunk at a time and the chunk's gradients pushed through the linear layer in the same pass,
  so no ``[B, T, V]`` tensor exists besides the reference input.

Inputs, ``logits`` mode: policy logits ``[B, T, V]`` (``requires_grad``) and reference logits (no grad). ``hidden``
mode: policy hidden states ``[B, T, H]`` and lm_head weight ``[V, H]`` (both ``requires_grad``; naive computes
``hidden @ weight.T`` then the same formula) and reference logits ``[B, T, V]`` (no grad). ``both`` runs each.

Time: the median wall time of one forward + backward over ``--repeats`` runs, after one warm-up run.

Memory: every (variant, T) runs in a fresh subprocess (this script with ``--worker``), so no allocator cache or
earlier peak of another variant can leak into the number. The worker allocates the inputs in place (no temporary
copies, so the high-water mark equals the live memory at that point) after a forward + backward on 4 positions
has paid the one-time costs (lazy imports, kernel and thread-pool set-up), reads ``ru_maxrss`` from
``resource.getrusage(RUSAGE_SELF)`` as the baseline, runs warm-up and repeats, and reads ``ru_maxrss`` again. The
peak is the difference: the largest resident-set growth over the inputs at any moment of any run. It includes
the gradients returned (``floor MB``): in ``logits`` mode the logits gradient, one ``[B, T, V]`` float32 tensor (a
floor for any exact method that returns it); in ``hidden`` mode the gradients of hidden and weight,
``[B, T, H] + [V, H]`` float32. Workers run with ``MALLOC_MMAP_THRESHOLD_=1048576`` so that glibc maps
every buffer of 1 MiB or more on its own and unmaps it when freed: RSS then follows the live tensors (by default
glibc raises that threshold after frees, up to 32 MiB, and keeps freed memory; this only matters for small T x V).
Value and gradient agreement is checked in one more subprocess per T.

Results: a table per (input, divergence) on stdout and ``--out`` (default ``benchmarks/results/bench_divergence.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from _common import write_result  # noqa: E402  (benchmarks/ is the script's directory)

DIVERGENCES = ("forward_kl", "js", "reverse_kl")
TARGET = {"seq_len": 4096, "vocab": 32000, "memory_ratio": 1 / 8, "time_ratio": 1.2}  # from the issue


def naive_divergence(logits, ref_logits, divergence: str):
    """Per-position divergence with full ``[B, T, V]`` log-softmaxes (the baseline; no chunking, no tricks)."""
    import torch

    lp = torch.log_softmax(logits, dim=-1)
    lq = torch.log_softmax(ref_logits, dim=-1)
    if divergence == "reverse_kl":  # KL(pi || pi_ref)
        return (lp.exp() * (lp - lq)).sum(-1)
    if divergence == "forward_kl":  # KL(pi_ref || pi)
        return (lq.exp() * (lq - lp)).sum(-1)
    if divergence == "js":  # 1/2 KL(pi || m) + 1/2 KL(pi_ref || m), m = (pi + pi_ref) / 2
        lm = torch.logaddexp(lp, lq) - math.log(2.0)
        return 0.5 * ((lp.exp() * (lp - lm)).sum(-1) + (lq.exp() * (lq - lm)).sum(-1))
    raise ValueError(f"unknown divergence {divergence!r}")


def make_inputs(mode: str, batch: int, seq_len: int, vocab: int, hidden_size: int, seed: int = 0):
    """``(leaves needing grad, reference logits)``, built in place (no temporary copies). ``logits``: policy logits
    (std 2) and nearby reference logits. ``hidden``: hidden states and an lm_head weight scaled so that the policy
    logits again have std 2, and reference logits = policy logits + noise (an in-place ``addmm_``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    if mode == "logits":
        logits = torch.randn(batch, seq_len, vocab, generator=gen).mul_(2.0).requires_grad_(True)
        ref = torch.randn(batch, seq_len, vocab, generator=gen).mul_(0.5)
        ref.add_(logits.detach())
        return (logits,), ref
    hidden = torch.randn(batch, seq_len, hidden_size, generator=gen).requires_grad_(True)
    weight = torch.randn(vocab, hidden_size, generator=gen).mul_(2.0 / math.sqrt(hidden_size)).requires_grad_(True)
    ref = torch.randn(batch, seq_len, vocab, generator=gen).mul_(0.5)
    ref.view(-1, vocab).addmm_(hidden.detach().view(-1, hidden_size), weight.detach().t())
    return (hidden, weight), ref


def forward_backward(variant: str, leaves, ref, divergence: str, chunk: int):
    """One forward + backward; returns the per-position values (the gradients are in ``leaf.grad``)."""
    for t in leaves:
        t.grad = None
    if variant == "naive":
        logits = leaves[0] if len(leaves) == 1 else leaves[0] @ leaves[1].t()
        value = naive_divergence(logits, ref, divergence)
    elif len(leaves) == 1:
        from rlkit.functional import f_divergence

        value = f_divergence(leaves[0], ref, divergence, chunk_size=chunk)
    else:
        from rlkit.functional import linear_f_divergence

        # the naive side's .sum() as the function's own reduction: gradients computed in the one chunked pass
        value = linear_f_divergence(leaves[0], leaves[1], ref, divergence, chunk_size=chunk, reduction="sum")
    value.sum().backward()
    return value.detach()


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def worker(a) -> dict:
    """Runs in a fresh process: time and peak-RSS growth of one (input, variant, divergence, T)."""
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.worker == "check":
        return check(a)
    # one-time costs (lazy imports, kernel/thread-pool initialisation) happen before the baseline, on 4 positions
    small, small_ref = make_inputs(a.input, 1, 4, a.vocab, a.hidden_size, seed=1)
    forward_backward(a.worker, small, small_ref, a.divergence, min(a.chunk, 2))
    del small, small_ref
    leaves, ref = make_inputs(a.input, a.batch, a.seq_len, a.vocab, a.hidden_size)
    base = max_rss_mb()
    forward_backward(a.worker, leaves, ref, a.divergence, a.chunk)  # warm-up
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        forward_backward(a.worker, leaves, ref, a.divergence, a.chunk)
        times.append(time.perf_counter() - t0)
    return {
        "time_s": statistics.median(times),
        "times_s": times,
        "peak_mb": max_rss_mb() - base,
        "baseline_mb": base,
        "threads": torch.get_num_threads(),
    }


def check(a) -> dict:
    """Both variants on the same inputs: max |value difference| and max |gradient difference| per input (logits;
    or hidden and weight), also relative to the largest naive gradient entry."""
    import torch

    leaves, ref = make_inputs(a.input, a.batch, a.seq_len, a.vocab, a.hidden_size)
    names = ("logits",) if a.input == "logits" else ("hidden", "weight")
    v_naive = forward_backward("naive", leaves, ref, a.divergence, a.chunk)
    g_naive = [t.grad.clone() for t in leaves]
    v_rlkit = forward_backward("rlkit", leaves, ref, a.divergence, a.chunk)
    total_diff = abs(float(v_naive.sum()) - float(v_rlkit.sum()))
    if a.input == "hidden":  # rlkit returned the sum; the per-position values, too
        from rlkit.functional import linear_f_divergence

        with torch.no_grad():
            v_rlkit = linear_f_divergence(leaves[0], leaves[1], ref, a.divergence, chunk_size=a.chunk)
    diffs = {n: float((g - t.grad).abs().max()) for n, g, t in zip(names, g_naive, leaves)}
    rel = {n: diffs[n] / max(float(g.abs().max()), 1e-30) for n, g in zip(names, g_naive)}
    return {
        "value_max_abs_diff": float((v_naive - v_rlkit).abs().max()),
        "sum_abs_diff": total_diff,
        "grad_max_abs_diff": max(diffs.values()),
        "grad_max_abs_diff_by_input": diffs,
        "grad_max_rel_diff_by_input": rel,
        "value_mean": float(v_naive.mean()),
    }


def spawn(a, mode: str, variant: str, divergence: str, seq_len: int) -> dict:
    """Run one worker in a fresh interpreter and return its JSON result (last stdout line)."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        variant,
        "--divergence",
        divergence,
        "--seq-len",
        str(seq_len),
        "--vocab",
        str(a.vocab),
        "--batch",
        str(a.batch),
        "--chunk",
        str(a.chunk),
        "--repeats",
        str(a.repeats),
        "--threads",
        str(a.threads),
        "--input",
        mode,
        "--hidden-size",
        str(a.hidden_size),
    ]
    # a fixed mmap threshold: every buffer >= 1 MiB is mmap-ed and returned to the OS when freed, so RSS follows the
    # live tensors (glibc's default raises the threshold after frees, up to 32 MiB, and then keeps freed memory)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"worker {variant} {mode} T={seq_len} {divergence} failed (rc {proc.returncode}):\n{proc.stderr}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(mode: str, divergence: str, rows: list[dict], a) -> None:
    size = f"B={a.batch}, V={a.vocab}" + (f", H={a.hidden_size}" if mode == "hidden" else "")
    print(f"\n{divergence}, input {mode}  ({size}, float32, CPU; ratio = rlkit / naive)")
    grads = ["logits"] if mode == "logits" else ["hidden", "weight"]
    head = (
        f"{'T':>6} {'naive s':>9} {'rlkit s':>9} {'time x':>7} {'naive MB':>9} {'rlkit MB':>9} {'mem x':>6} "
        f"{'floor MB':>9} {'|dvalue|':>9}" + "".join(f" {'|dgrad ' + n[0] + '|':>10}" for n in grads)
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        c = r["check"]
        print(
            f"{r['seq_len']:>6} {r['naive']['time_s']:>9.4f} {r['rlkit']['time_s']:>9.4f} {r['time_ratio']:>7.3f} "
            f"{r['naive']['peak_mb']:>9.1f} {r['rlkit']['peak_mb']:>9.1f} {r['memory_ratio']:>6.3f} "
            f"{r['floor_mb']:>9.1f} {c['value_max_abs_diff']:>9.2e}"
            + "".join(f" {c['grad_max_abs_diff_by_input'][n]:>10.2e}" for n in grads)
        )


def target_verdict(mode: str, divergence: str, rows: list[dict], vocab: int) -> dict:
    hit = [r for r in rows if r["seq_len"] == TARGET["seq_len"]]
    if vocab != TARGET["vocab"] or not hit:
        print(
            f"target (issue: T={TARGET['seq_len']}, V={TARGET['vocab']}: memory <= 1/8 of naive, time <= 1.2x "
            f"naive): not measured in this run"
        )
        return {"measured": False}
    r = hit[0]
    mem_ok, time_ok = r["memory_ratio"] <= TARGET["memory_ratio"], r["time_ratio"] <= TARGET["time_ratio"]
    print(
        f"target (issue), input {mode}, at T={TARGET['seq_len']}, V={vocab}: memory ratio {r['memory_ratio']:.3f} "
        f"(<= 0.125: {'PASS' if mem_ok else 'FAIL'}), time ratio {r['time_ratio']:.3f} "
        f"(<= 1.2: {'PASS' if time_ok else 'FAIL'})"
    )
    return {"measured": True, "memory_ok": mem_ok, "time_ok": time_ok}


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-lens", default="512,1024,2048,4096", help="comma-separated sequence lengths T")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256, help="rlkit chunk_size (positions per chunk)")
    p.add_argument("--divergences", default=",".join(DIVERGENCES), help=f"comma-separated, from {DIVERGENCES}")
    p.add_argument(
        "--input",
        choices=("logits", "hidden", "both"),
        default="both",
        help="what rlkit gets: policy logits (f_divergence), hidden states + lm_head weight "
        "(linear_f_divergence), or each in turn",
    )
    p.add_argument("--hidden-size", type=int, default=1024, help="H of the hidden states and weight (hidden mode)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per (variant, T), after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    p.add_argument("--out", default=None, help="JSON result file (default benchmarks/results/bench_divergence.json)")
    # internal: one measurement in a fresh process
    p.add_argument("--worker", choices=("naive", "rlkit", "check"), help=argparse.SUPPRESS)
    p.add_argument("--divergence", default="forward_kl", help=argparse.SUPPRESS)
    p.add_argument("--seq-len", type=int, default=512, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return None

    seq_lens = [int(t) for t in a.seq_lens.split(",") if t.strip()]
    divergences = [d.strip() for d in a.divergences.split(",") if d.strip()]
    bad = [d for d in divergences if d not in DIVERGENCES]
    if bad or a.repeats < 1 or a.chunk < 1 or a.hidden_size < 1:
        p.error(f"divergences must be among {DIVERGENCES} (got {bad}); --repeats, --chunk, --hidden-size >= 1")
    modes = ("logits", "hidden") if a.input == "both" else (a.input,)
    result = {
        "benchmark": "bench_divergence",
        "config": {k: v for k, v in vars(a).items() if k not in ("worker", "divergence", "seq_len")},
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "memory_method": "peak ru_maxrss growth over the inputs, fresh subprocess per (input, variant, T)",
        "target": TARGET,
        "results": {},
    }
    for mode in modes:
        result["results"][mode] = {}
        for div in divergences:
            rows = []
            for T in seq_lens:
                btv = a.batch * T * a.vocab
                floor = btv if mode == "logits" else (a.batch * T + a.vocab) * a.hidden_size
                row = {"input": mode, "seq_len": T, "tensor_mb": btv * 4 / 2**20, "floor_mb": floor * 4 / 2**20}
                for variant in ("naive", "rlkit", "check"):
                    row[variant] = spawn(a, mode, variant, div, T)
                row["time_ratio"] = row["rlkit"]["time_s"] / row["naive"]["time_s"]
                row["memory_ratio"] = row["rlkit"]["peak_mb"] / max(row["naive"]["peak_mb"], 1e-9)
                rows.append(row)
            print_table(mode, div, rows, a)
            verdict = target_verdict(mode, div, rows, a.vocab)
            result["results"][mode][div] = {"rows": rows, "target": verdict}
    write_result("bench_divergence", result, a.out)
    return result


if __name__ == "__main__":
    main()
