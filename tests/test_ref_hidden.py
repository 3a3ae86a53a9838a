"""References sent as hidden states (V > H): the reference worker's hidden states through its lm_head are its
logits; exact divergences from ``PolicyBatch.ref_hidden`` equal those from reference logits (fused and logits
learners, values and gradients); the learner caches the head per version and refuses a stale one; and a GRPO run
in-process sends hidden states, the head once per version (again after each TR-DPO refresh), and no logits."""

import copy
import json

import pytest
import torch

from rlkit.divergences import f_divergence
from rlkit.models.tiny import save_tiny
from rlkit.regularizers import PolicyBatch
from rlkit.types import ReferenceOutput, TrainBatch
from rlkit.workers.local import actor_class
from rlkit.workers.reference import ReferenceWorker

# hidden 32 < vocab 54: the hidden-state form is the smaller transfer, so the learner asks for it
NARROW = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def narrow_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("narrow"), **NARROW))


def batch_ids(rows=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [
        p for p in (torch.randint(5, 40, (3,), generator=g).tolist() for _ in range(rows // 4)) for _ in range(4)
    ]
    comps = [
        torch.randint(5, 40, (int(torch.randint(2, 9, (), generator=g)),), generator=g).tolist() for _ in range(rows)
    ]
    return prompts, comps


def test_reference_hidden_states_through_its_head_are_its_logits(narrow_dir):
    ref = actor_class(ReferenceWorker)("initial", [narrow_dir], temperature=0.7)
    prompts, comps = batch_ids()
    as_logits = ref.compute(prompts, comps, want_logits=True)
    as_hidden = ref.compute(prompts, comps, hidden=True)
    assert "logits" not in as_hidden and as_hidden["head_version"] == 0
    head = ref.head()
    assert head["version"] == 0 and head["temperature"] == 0.7 and head["weight"].shape == (54, 32)
    rebuilt = torch.nn.functional.linear(as_hidden["hidden"], head["weight"], head["bias"]) / 0.7
    torch.testing.assert_close(rebuilt, as_logits["logits"], rtol=0, atol=2e-5)
    torch.testing.assert_close(as_hidden["logprobs"], as_logits["logprobs"], rtol=0, atol=2e-5)
    # a refresh moves the reference and bumps the version; the head handed out earlier is a copy
    before = head["weight"].clone()
    state = {k: torch.randn_like(v) for k, v in ref.model.state_dict().items()}
    ref.refresh(state, 0.5)
    assert ref.compute(prompts, comps, hidden=True)["head_version"] == 1 and ref.head()["version"] == 1
    assert torch.equal(head["weight"], before) and not torch.equal(ref.head()["weight"], before)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "js"])
@pytest.mark.parametrize("fused", [True, False])
def test_exact_divergence_from_reference_hidden_equals_from_reference_logits(divergence, fused):
    g = torch.Generator().manual_seed(1)
    B, T, H, V, temp = 3, 5, 8, 40, 0.8
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(V, H, generator=g, dtype=torch.float64), torch.randn(V, generator=g, dtype=torch.float64)
    ref_h = torch.randn(B, T, 6, generator=g, dtype=torch.float64)
    ref_w = torch.randn(V, 6, generator=g, dtype=torch.float64)
    ref_b = torch.randn(V, generator=g, dtype=torch.float64)
    mask = (torch.arange(T)[None] < torch.tensor([5, 3, 1])[:, None]).double()
    ref_logits = torch.nn.functional.linear(ref_h, ref_w, ref_b) / temp

    def batch(ref_form):
        kw = (
            {"ref_hidden": {"initial": (ref_h, ref_w, ref_b, temp)}}
            if ref_form == "hidden"
            else {"ref_logits": {"initial": ref_logits}}
        )
        if fused:
            return PolicyBatch(logprobs=torch.zeros(B, T), mask=mask, hidden=hidden, lm_head=(weight, bias, temp), **kw)
        logits = torch.nn.functional.linear(hidden, weight, bias) / temp
        return PolicyBatch(logprobs=torch.zeros(B, T), mask=mask, logits=logits, **kw)

    outs = {}
    for form in ("hidden", "logits"):
        value = batch(form).exact_divergence(divergence, "initial", "test", chunk_size=2)
        (grad,) = torch.autograd.grad((value * torch.linspace(0.5, 2, value.numel()).view_as(value)).sum(), hidden)
        outs[form] = (value.detach(), grad)
    torch.testing.assert_close(outs["hidden"][0], outs["logits"][0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(outs["hidden"][1], outs["logits"][1], rtol=1e-9, atol=1e-10)
    # and both against the textbook formula on materialised logits
    want = f_divergence(
        torch.nn.functional.linear(hidden, weight, bias).detach() / temp, ref_logits, divergence, mask=mask
    )
    torch.testing.assert_close(outs["hidden"][0], want, rtol=1e-9, atol=1e-10)


# a dense reward (shorter is better), so that the untrained policy moves within a few steps
DENSE = "rewards=[{name: numeric_match}, {name: length_penalty, weight: 0.5, params: {max_length: 2, scale: 8}}]"
GRPO = {"learning_rate": 1e-4, "group_size": 4, "clip_low": 0.2, "clip_high": 0.28, "aggregation": "token-mean"}
REGS = [{"name": "forward_kl", "mode": "exact", "reference": "initial"}]


def learner_data(step, ref, prompts, comps, form):
    g = torch.Generator().manual_seed(30 + step)
    out = ref.compute(prompts, comps, want_logits=form == "logits", hidden=form == "hidden")
    scores = [float(i % 3 == 0) for i in range(len(comps))]
    return TrainBatch(
        step=step,
        prompt_ids=prompts,
        completion_ids=comps,
        scores=scores,
        correct=scores,
        rollout_logprobs=[(-torch.rand(len(c), generator=g)).tolist() for c in comps],
        refs={"initial": ReferenceOutput.from_dict(out)},
    )


@pytest.mark.parametrize("fused", [True, False])
def test_learner_steps_agree_with_reference_hidden_or_logits_and_cache_the_head(narrow_dir, fused):
    from rlkit.workers.learner import LearnerCore

    ref = actor_class(ReferenceWorker)("initial", [narrow_dir], temperature=0.8)
    cores = {
        f: LearnerCore(narrow_dir, {**GRPO, "fused_head": fused}, REGS, temperature=0.8) for f in ("hidden", "logits")
    }
    assert cores["hidden"].needs().ref_hidden == ("initial",)
    for step in range(2):
        prompts, comps = batch_ids(seed=step)
        data = {f: learner_data(step, ref, prompts, comps, f) for f in ("hidden", "logits")}
        if step == 0:  # the driver sends the head with the first batch of its version only
            data["hidden"].refs["initial"].head = ref.head()
        assert data["hidden"].refs["initial"].logits is None
        out = {f: cores[f].train_step(copy.deepcopy(data[f])) for f in data}
        for k in out["logits"]:
            assert out["hidden"][k] == pytest.approx(out["logits"][k], rel=1e-5, abs=1e-6), k
        # step 0: the policy is still the reference, so the exact KL is 0 up to rounding; after an update, > 0
        kl = out["hidden"]["forward_kl_exact/value"]
        assert kl == pytest.approx(0.0, abs=1e-7) if step == 0 else kl > 1e-7, (step, kl)
    stale = learner_data(2, ref, prompts, comps, "hidden")
    stale.refs["initial"].head_version = 1
    with pytest.raises(RuntimeError, match="reference 'initial' sent hidden states of lm_head version 1"):
        cores["hidden"].train_step(stale)


def test_wide_models_keep_reference_logits(tmp_path):
    from rlkit.workers.learner import LearnerCore

    path = str(save_tiny(tmp_path, num_hidden_layers=1))  # hidden 128 > vocab 54: logits are the smaller transfer
    assert LearnerCore(path, GRPO, REGS).needs().ref_hidden == ()


@pytest.mark.slow
def test_grpo_run_sends_hidden_states_and_each_head_version_once(tmp_path, narrow_dir, monkeypatch):
    from rlkit.config import load_recipe
    from rlkit.trainer.grpo import run_grpo

    cls = actor_class(ReferenceWorker)
    computes, heads = [], []
    compute, head = cls.compute, cls.head

    def recording_compute(self, *args, **kwargs):
        out = compute(self, *args, **kwargs)
        if self.name != "initial" or kwargs.get("hidden"):
            computes.append((self.name, kwargs.get("hidden", False), "logits" in out))
        return out

    def recording_head(self):
        heads.append((self.name, self.head_version))
        return head(self)

    monkeypatch.setattr(cls, "compute", recording_compute)
    monkeypatch.setattr(cls, "head", recording_head)
    regs = (
        "regularizers=[{name: forward_kl, mode: exact, reference: initial}, {name: js, mode: exact, label: tr, "
        "reference: {type: initial, refresh_every: 1}}]"
    )
    recipe = load_recipe(
        "recipes/quickstart.yaml",
        [
            f"output_dir={tmp_path}",
            f"model.name_or_path={narrow_dir}",
            "sft.enabled=false",
            "grpo.steps=3",
            "grpo.prompts_per_step=6",  # enough groups that some group's rewards differ (the policy must move)
            "grpo.group_size=4",
            "grpo.fused_head=true",
            "ray.mode=inprocess",
            "ray.torch_threads=1",
            "eval.before=false",
            "eval.num_prompts=2",
            "eval.n_samples=2",
            "eval.ks=[1,2]",
            "eval.kl_to_initial=false",
            "logging.plot=false",
            "logging.tensorboard=false",
            "checkpoint.save_final=false",
            "data.params={n_train: 32, n_eval: 4}",
            regs,
            DENSE,
        ],
    )
    threads = torch.get_num_threads()
    try:
        summary = run_grpo(recipe)
    finally:
        torch.set_num_threads(threads)
    assert summary["steps"] == 3
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["forward_kl_exact/value"] > 0  # the policy moved (the hard-refreshed "tr" reference is it)
    train = [c for c in computes if c[1]]
    assert len(train) == 6 and all(not has_logits for _, _, has_logits in train), computes
    # the fixed reference's head once; the refreshed one's at each of its 3 versions (refreshed after steps 1, 2)
    assert sorted(heads) == [
        ("initial", 0),
        ("initial-refresh1-1", 0),
        ("initial-refresh1-1", 1),
        ("initial-refresh1-1", 2),
    ], heads


@pytest.mark.slow
def test_hidden_state_references_train_identically_through_ray_actors(tmp_path, narrow_dir):
    """The same transfer through Ray (object store, a head per version): every metric equals the in-process run's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    rows = {}
    for mode in ("inprocess", "actors"):
        out = tmp_path / mode
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "rlkit",
                "train",
                "recipes/quickstart.yaml",
                f"output_dir={out}",
                f"model.name_or_path={narrow_dir}",
                "sft.enabled=false",
                "grpo.steps=2",
                "grpo.prompts_per_step=6",  # enough groups that some group's rewards differ (the policy must move)
                "grpo.group_size=4",
                "grpo.fused_head=true",
                f"ray.mode={mode}",
                "ray.torch_threads=1",
                "eval.before=false",
                "eval.num_prompts=2",
                "eval.n_samples=2",
                "eval.ks=[1,2]",
                "logging.plot=false",
                "logging.tensorboard=false",
                "data.params={n_train: 32, n_eval: 4}",
                "regularizers=[{name: forward_kl, mode: exact, reference: initial}, {name: js, mode: exact, label: tr, "
                "reference: {type: initial, refresh_every: 1, refresh_rate: 0.5}}]",
                DENSE,
            ],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows[mode] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows["actors"]) == 2
    assert rows["actors"][-1]["forward_kl_exact/value"] > 0 and rows["actors"][-1]["tr/value"] > 0
    for a, b in zip(rows["inprocess"], rows["actors"]):
        diff = {k: (a[k], b.get(k)) for k in a if not k.startswith("time") and a[k] != b.get(k)}
        assert not diff, diff
