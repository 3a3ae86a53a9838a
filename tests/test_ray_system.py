"""The actor/learner system through a real local Ray cluster with the real tiny transformers model."""

import pytest
import torch

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def _greedy_local(model, tokenizer, prompts, max_new_tokens=6):
    from rlkit.rollout import SamplingParams, TransformersEngine

    engine = TransformersEngine(model, tokenizer)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    return [c.token_ids for c in engine.generate(ids, SamplingParams(greedy=True, max_new_tokens=max_new_tokens))]


def test_rollout_worker_generation_follows_weight_sync(cluster, tiny_dir):
    from rlkit.models.loading import load_model_and_tokenizer
    from rlkit.models.tiny import build_tiny_model
    from rlkit.workers import RolloutWorker

    prompts = ["1+2=", "7-3=", "12+9=", "5+5="]
    model, tok = load_model_and_tokenizer(tiny_dir)
    worker = RolloutWorker.remote(tiny_dir, rank=0)
    ids = [tok(p)["input_ids"] for p in prompts]
    params = {"greedy": True, "max_new_tokens": 6}
    before = [c["token_ids"] for c in ray.get(worker.generate.remote(ids, params))]
    assert before == _greedy_local(model, tok, prompts)

    other = build_tiny_model(seed=123)  # a different policy: its greedy continuations differ
    state = {k: v.detach().clone() for k, v in other.state_dict().items()}
    assert ray.get(worker.update_weights.remote(state, 7)) == 7
    after = [c["token_ids"] for c in ray.get(worker.generate.remote(ids, params))]
    assert after != before
    assert after == _greedy_local(other, tok, prompts)
    assert ray.get(worker.weights_version.remote()) == 7


def test_rollout_logprobs_match_learner_logprobs(cluster, tiny_dir):
    """Sampling log-probs returned by the engine equal a fresh teacher-forced forward pass (same temperature)."""
    from rlkit.models.forward import collate, completion_logits, token_logprobs
    from rlkit.models.loading import load_model_and_tokenizer
    from rlkit.workers import RolloutWorker

    model, tok = load_model_and_tokenizer(tiny_dir)
    worker = RolloutWorker.remote(tiny_dir, rank=1)
    ids = [tok(p)["input_ids"] for p in ["3+4=", "10-2=", "8+8="]]
    comps = ray.get(worker.generate.remote(ids, {"n": 4, "max_new_tokens": 6, "temperature": 0.8, "seed": 3}))
    batch = collate([c["prompt_ids"] for c in comps], [c["token_ids"] for c in comps], tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(completion_logits(model.eval(), batch, 0.8), batch["completion_ids"])
    for i, c in enumerate(comps):
        torch.testing.assert_close(lp[i, : len(c["logprobs"])], torch.tensor(c["logprobs"]), atol=2e-4, rtol=1e-4)
