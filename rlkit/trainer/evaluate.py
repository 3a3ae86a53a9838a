"""Held-out evaluation through the rollout workers: pass@k (unbiased), greedy accuracy, reward, entropy, length."""

from __future__ import annotations

import math

from rlkit.utils.evaluation import correctness, summarize_correctness
from rlkit.workers.local import get, ray_error


def shard(items: list, n: int) -> list[list]:
    size = math.ceil(len(items) / n) if items else 0
    return [items[i * size : (i + 1) * size] for i in range(n)]


def generate(
    workers, prompt_ids: list[list[int]], params: dict, on_restart=None, version: int | None = None, retries: int = 3
) -> list[dict]:
    """Split prompts across rollout workers (Ray), keep the order: ``n`` completions per prompt, grouped.

    Faults: a worker that dies mid-call, or was restarted since the last weight sync (its weights are not
    ``version``), is restarted by Ray (``max_restarts``); ``on_restart(worker)`` gives it the current weights and its
    shard is generated again with the same seed, up to ``retries`` times. The result has every completion or the
    call raises: never fewer samples, never samples from stale weights."""
    parts = shard(prompt_ids, len(workers))
    call = lambda i: workers[i].generate.remote(  # noqa: E731
        parts[i], {**params, "seed": (params.get("seed") or 0) + i}, version
    )
    futures = {i: call(i) for i, p in enumerate(parts) if p}
    out = []
    for i, fut in futures.items():
        for attempt in range(retries + 1):
            try:
                result = get(fut)
                if not (isinstance(result, dict) and "stale" in result):
                    out.extend(result)
                    break
                why = f"was restarted (weights version {result['stale']}, expected {version})"
            except ray_error() as err:
                why = f"died ({type(err).__name__})"
            if attempt == retries:
                raise RuntimeError(f"rollout worker {i} {why}; gave up after {retries} retries")
            print(f"rollout worker {i} {why}: re-sending weights and retrying its {len(parts[i])} prompts", flush=True)
            if on_restart is not None:
                on_restart(workers[i])
            fut = call(i)
    return out


def evaluate(
    workers,
    reward_worker,
    prompts: list[str],
    prompt_ids: list[list[int]],
    answers: list[str],
    n_samples: int,
    ks: list[int],
    temperature: float,
    max_new_tokens: int,
    seed: int = 0,
    reference=None,
    on_restart=None,
    version: int | None = None,
) -> dict:
    """pass@k for each k (unbiased, from ``n_samples`` per prompt), greedy accuracy, mean reward, entropy and
    response length; with a ``reference`` worker serving the initial policy, also ``kl_to_initial``: the
    Monte-Carlo estimate of KL(policy || initial) per generated token, ``sum_t (log p - log p0) / #tokens`` over the
    sampled completions (unbiased k1 form; the reference scores at the rollout temperature, so it is exact when the
    eval temperature equals it)."""
    params = dict(n=n_samples, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    comps = generate(workers, prompt_ids, params, on_restart=on_restart, version=version)
    texts = [c["text"] for c in comps]
    rep_prompts = [p for p in prompts for _ in range(n_samples)]
    rep_answers = [a for a in answers for _ in range(n_samples)]
    scored = get(reward_worker.score.remote(rep_prompts, texts, rep_answers))
    ok = correctness(scored["components"])
    grouped = [ok[i * n_samples : (i + 1) * n_samples] for i in range(len(prompts))]
    result = summarize_correctness(grouped, ks)
    greedy = generate(
        workers,
        prompt_ids,
        dict(n=1, max_new_tokens=max_new_tokens, greedy=True),
        on_restart=on_restart,
        version=version,
    )
    g_scored = get(reward_worker.score.remote(prompts, [c["text"] for c in greedy], answers))
    n_tok = sum(len(c["token_ids"]) for c in comps)
    result.update(
        {
            "k": max(ks),
            "reward_mean": sum(scored["totals"]) / len(texts),
            "greedy_accuracy": sum(correctness(g_scored["components"])) / len(prompts),
            "entropy": -sum(sum(c["logprobs"]) for c in comps) / max(n_tok, 1),  # MC estimate: E[-log p] per token
            "response_length": n_tok / len(comps),
            "num_prompts": len(prompts),
            "n_samples": n_samples,
        }
    )
    if reference is not None:
        ref = get(reference.compute.remote([c["prompt_ids"] for c in comps], [c["token_ids"] for c in comps]))
        ref_lp = ref["logprobs"]
        diff = sum(float(lp) - float(ref_lp[i, t]) for i, c in enumerate(comps) for t, lp in enumerate(c["logprobs"]))
        result["kl_to_initial"] = diff / max(n_tok, 1)
    result["pass@k"] = result[f"pass@{max(ks)}"]
    return result
