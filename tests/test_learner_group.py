"""Data-parallel learners (``learner.num_workers``): sharding, the global loss normalizer, bitwise-identical replicas
and agreement with one learner on the same global batch, through a real local Ray cluster and the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlkit.config import GRPOConfig
from rlkit.types import ReferenceOutput, TrainBatch
from rlkit.workers.learner_group import loss_share, merge_metrics, shard_batch, shard_rows

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]
GROUP, PROMPTS, STEPS = 4, 4, 3
# 2 workers vs 1 worker on the same global batches (float32 sums in another order: shard-sized matmuls, the
# all-reduce). Measured after STEPS AdamW steps (lr 1e-3): losses differ by <= 2e-8, the KL value and grad norm by
# <= 1.3e-6; the parameters by 1.9e-7 at the 99.9% quantile and 2.5e-5 at the maximum: AdamW's first steps move
# each parameter by about lr * g / |g|, so an entry whose gradient is ~0 turns float noise into a visible step.
# Forgetting the token-count shares (each rank weighing 1/2) gives loss differences of ~3e-2 and parameter
# differences of ~6e-3 (also at the 99.9% quantile).
TOL = 1e-5  # losses and metrics
PARAM_TOL_MAX, PARAM_TOL_Q999 = 1e-4, 1e-6


def _grpo(**kw) -> dict:
    return GRPOConfig(group_size=GROUP, prompts_per_step=PROMPTS, learning_rate=1e-3, **kw).model_dump()


def _batch(step: int, vocab: int) -> TrainBatch:
    """A synthetic train-step batch. Groups 0-1 (worker 0's shard) have long completions, groups 2-3 (worker 1's)
    short ones: the shards hold very different token counts."""
    g = torch.Generator().manual_seed(100 + step)
    B = GROUP * PROMPTS
    lens = [
        int(torch.randint(7, 11, (), generator=g)) if i < B // 2 else int(torch.randint(1, 3, (), generator=g))
        for i in range(B)
    ]
    plens = [int(torch.randint(3, 6, (), generator=g)) for _ in range(PROMPTS)]
    prompts = [p for p in (torch.randint(5, vocab, (n,), generator=g).tolist() for n in plens) for _ in range(GROUP)]
    comps = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lens]
    scores = torch.randint(0, 2, (B,), generator=g).float()
    scores[::GROUP] = 1.0 - scores[1::GROUP]  # every group has both outcomes: non-zero advantages
    T = max(lens)
    ref = torch.zeros(B, T)
    for i, n in enumerate(lens):
        ref[i, :n] = -torch.rand(n, generator=g) * 3
    return TrainBatch(
        step=step,
        prompt_ids=prompts,
        completion_ids=comps,
        scores=scores.tolist(),
        correct=scores.tolist(),
        rollout_logprobs=[(-torch.rand(n, generator=g)).tolist() for n in lens],
        refs={"initial": ReferenceOutput(logprobs=ref)},
    )


# ------------------------------------------------------------------------------------------------ pure parts
def test_shard_rows_keeps_groups_whole_and_matches_minibatches():
    assert shard_rows(16, 4, 2) == [list(range(8)), list(range(8, 16))]
    # 8 groups, 2 workers, 2 minibatches: worker k's minibatch j is the k-th half of the whole batch's minibatch j
    rows = shard_rows(32, 4, 2, minibatches=2)
    whole = torch.arange(32).chunk(2)
    for k in range(2):
        for j, mb in enumerate(torch.tensor(rows[k]).chunk(2)):
            assert mb.tolist() == whole[j][k * 8 : (k + 1) * 8].tolist()
    assert shard_rows(24, 4, 2, minibatches=2) == [list(range(12)), list(range(12, 24))]  # 6 groups: contiguous
    with pytest.raises(ValueError, match="learner.num_workers=2"):
        shard_rows(12, 4, 2)
    with pytest.raises(ValueError, match="whole groups"):
        shard_rows(10, 4, 2)


def test_shard_batch_cuts_reference_tensors_to_the_shard_length():
    data = _batch(0, 40)
    short = shard_batch(data, list(range(8, 16)))
    T = max(len(c) for c in short.completion_ids)
    assert short.refs["initial"].logprobs.shape == (8, T)
    assert torch.equal(short.refs["initial"].logprobs, data.refs["initial"].logprobs[8:, :T])
    assert short.scores == data.scores[8:] and short.step == 0


def test_loss_shares_make_the_global_normalizer():
    stats = torch.tensor([[30.0, 8, 10], [10.0, 8, 2]], dtype=torch.float64)  # (tokens, sequences, padded length)
    assert [loss_share(stats, r, "token-mean") for r in (0, 1)] == [0.75, 0.25]
    assert [loss_share(stats, r, "seq-mean-token-mean") for r in (0, 1)] == [0.5, 0.5]
    assert [loss_share(stats, r, "drgrpo") for r in (0, 1)] == [0.5, 0.5]  # b_k / B: L is the same constant


def test_merge_metrics():
    m = merge_metrics(
        [{"a": 1.0, "x_max": 2.0, "count/n": 3.0}, {"a": 3.0, "x_max": 1.0, "count/n": 4.0, "nonfinite/loss": 1.0}],
        [0.75, 0.25],
    )
    assert m == {"a": 1.5, "x_max": 2.0, "count/n": 7.0, "nonfinite/loss": 1.0}


class _Capture:
    """A ``dist`` hook that records the local gradient and skips the update."""

    def sync(self, opt, finite, mask):
        self.grads = [p.grad.clone() for g in opt.param_groups for p in g["params"]]
        self.tokens = float(mask.sum())
        return False

    def reduce_metrics(self, metrics):
        return metrics


def test_token_mean_gradient_is_the_token_weighted_sum_of_shard_gradients(tiny_dir):
    """Why the shares matter: the gradient of the whole batch's token-mean loss equals the shards' gradients
    weighted by their token counts, and differs from their plain mean by far more than TOL."""
    from rlkit.workers import LearnerCore

    core = LearnerCore(tiny_dir, _grpo(max_bad_steps=0), "kl_k3")
    data = _batch(0, len(core.tokenizer))
    grads, tokens = [], []
    for part in (data, shard_batch(data, list(range(8))), shard_batch(data, list(range(8, 16)))):
        core.dist = _Capture()
        core.train_step(part)
        grads.append(core.dist.grads)
        tokens.append(core.dist.tokens)
    full, g0, g1 = grads
    n0, n1 = tokens[1], tokens[2]
    assert n0 > 3 * n1  # very unequal shards
    weighted = max(float((f - (n0 * a + n1 * b) / (n0 + n1)).abs().max()) for f, a, b in zip(full, g0, g1))
    plain = max(float((f - (a + b) / 2).abs().max()) for f, a, b in zip(full, g0, g1))
    assert weighted < 1e-6, weighted
    assert plain > 1e-3, plain


# ------------------------------------------------------------------------------------------------ through Ray
@pytest.fixture(scope="module")
def runs(cluster, tiny_dir):
    """STEPS steps of the same batches with 2 data-parallel workers and with one in-process learner."""
    from rlkit.workers import LearnerCore
    from rlkit.workers.learner_group import LearnerGroup

    torch.set_num_threads(1)
    single = LearnerCore(tiny_dir, _grpo(), "kl_k3", seed=0)
    vocab = len(single.tokenizer)
    group = LearnerGroup(2, tiny_dir, _grpo(), "kl_k3", num_cpus=0.5, seed=0, torch_threads=1)
    one, two = [], []
    for step in range(STEPS):
        data = _batch(step, vocab)
        one.append(single.train_step(data))
        two.append(ray.get(group.train_step.remote(data)))
    replicas = ray.get([w.parameters_digest.remote() for w in group.workers])
    yield {"one": one, "two": two, "single": single, "group": group, "replicas": replicas, "vocab": vocab}
    group.shutdown()


@pytest.mark.ray
def test_replicas_are_bitwise_identical(runs):
    a, b = runs["replicas"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs["group"].backend == "gloo"


@pytest.mark.ray
def test_two_workers_match_one_worker_on_the_same_global_batch(runs, tiny_dir):
    """Unequal token counts across the shards (see _batch): only the token-count shares make this hold."""
    from rlkit.models.loading import load_model_and_tokenizer

    single = {k: v.detach() for k, v in runs["single"].model.named_parameters()}
    two = runs["replicas"][0]
    initial = {k: v.detach() for k, v in load_model_and_tokenizer(tiny_dir)[0].named_parameters()}
    moved = max(float((single[k] - initial[k]).abs().max()) for k in single)
    diff = torch.cat([(single[k] - two[k]).abs().flatten() for k in single])
    big, q999 = float(diff.max()), float(diff.quantile(0.999))
    print(f"after {STEPS} steps, |param diff| 1 vs 2 workers: max {big:.3g}, 99.9% {q999:.3g}; max change {moved:.3g}")
    assert moved > 10 * PARAM_TOL_MAX  # the runs trained (3 steps of lr 1e-3)
    assert big < PARAM_TOL_MAX and q999 < PARAM_TOL_Q999, (big, q999)
    for one, two in zip(runs["one"], runs["two"]):
        for key in ("loss/total", "loss/policy", "kl_k3/value", "grad_norm"):
            assert abs(one[key] - two[key]) < TOL, (key, one[key], two[key])
        for key in ("reward/mean", "reward/accuracy", "response/length", "advantage/abs_mean"):
            assert abs(one[key] - two[key]) < 1e-6, (key, one[key], two[key])


@pytest.mark.ray
def test_weights_and_checkpoints_come_from_rank_zero(runs, tmp_path):
    group = runs["group"]
    weights = ray.get(group.get_weights.remote())
    params = runs["replicas"][0]
    assert all(torch.equal(weights[k], params[k]) for k in params)
    path = ray.get(group.save.remote(str(tmp_path / "ck"), {"step": STEPS}))
    assert (Path(path) / "model.safetensors").exists() and (Path(path) / "trainer_state.json").exists()
    assert ray.get(group.needs.remote()).ref_logprobs == ("initial",)
    assert ray.get(group.load_training_state.remote(path)) == {"step": STEPS}


@pytest.mark.ray
def test_a_non_finite_loss_on_one_rank_skips_the_update_on_every_rank(runs):
    group = runs["group"]
    before = ray.get([w.parameters_digest.remote() for w in group.workers])
    data = _batch(STEPS, runs["vocab"])
    data.refs["initial"].logprobs[8:] = float("nan")  # only worker 1's shard
    m = ray.get(group.train_step.remote(data))
    assert m["skipped_updates"] == 1.0 and m["nonfinite/loss"] == 1.0
    after = ray.get([w.parameters_digest.remote() for w in group.workers])
    for b, a in zip(before, after):
        assert all(torch.equal(b[k], a[k]) for k in b)
    m = ray.get(group.train_step.remote(_batch(STEPS + 1, runs["vocab"])))  # the group goes on
    assert m["skipped_updates"] == 0.0


@pytest.mark.slow
@pytest.mark.ray
def test_cli_run_with_two_learner_workers(tmp_path):
    small = [
        "sft.max_steps=60",
        "sft.num_examples=600",
        "grpo.steps=2",
        "grpo.prompts_per_step=4",
        "grpo.group_size=4",
        "eval.num_prompts=8",
        "eval.n_samples=4",
        "eval.ks=[1,4]",
        "logging.print_every=1",
        "eval.before=false",
        "logging.plot=false",
        "logging.tensorboard=false",
    ]
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlkit",
            "train",
            "recipes/quickstart.yaml",
            f"output_dir={tmp_path}",
            *small,
            "learner.num_workers=2",
            "ray.cpus_per_learner=0.25",
            "ray.torch_threads=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Learner[0] pid=" in log and "Learner[1] pid=" in log
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "kl_k3/value" in rows[-1]
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_bad_worker_count_is_a_config_error(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlkit",
            "train",
            "recipes/quickstart.yaml",
            f"output_dir={tmp_path}",
            "learner.num_workers=3",
            "grpo.prompts_per_step=4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "grpo.prompts_per_step=4 must be a multiple of learner.num_workers=3" in proc.stderr
