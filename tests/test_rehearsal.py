"""DPH-RL rehearsal (rlkit/trainer/rehearsal.py): the D_pef / D_exp split, the rehearsal loss and its gradient in a
learner step, the config checks, and `rlkit train recipes/grpo_dph.yaml` end to end in-process (GRPO rows from D_exp
only, rehearsal rows from D_pef only, the pre-sampled set reused on --resume)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from rlkit._config import ConfigError
from rlkit.config import load_recipe
from rlkit.regularizers import build_regularizers
from rlkit.objectives.rehearsal import on_reference_samples, rehearsal_loss
from rlkit.trainer.rehearsal import RehearsalSet, default_responses_per_step, rehearsal_indices, split_by_correctness
from rlkit.types import RehearsalBatch, TrainBatch

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
DPH = str(ROOT / "recipes" / "grpo_dph.yaml")


# --- (a) the split --------------------------------------------------------------------------------------------------


def test_split_keeps_only_prompts_solved_k_of_k():
    correct = [[True] * 4, [True, True, True, False], [False] * 4, [True] * 4, [False, True, True, True]]
    perfect, explore = split_by_correctness(correct)
    assert perfect == [0, 3] and explore == [1, 2, 4]
    assert split_by_correctness([[True]]) == ([0], []) and split_by_correctness([[False]]) == ([], [0])
    assert split_by_correctness([]) == ([], [])
    with pytest.raises(ValueError, match="prompt 1 has no samples"):
        split_by_correctness([[True], []])


def test_rehearsal_rows_walk_the_pool_in_shuffled_passes():
    n, per_step = 10, 4
    rows = [i for step in range(5) for i in rehearsal_indices(n, per_step, step, seed=3)]  # 20 rows = 2 passes
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert rows[:10] != rows[10:]  # a fresh permutation per pass
    assert rehearsal_indices(n, per_step, 2, seed=3) == rows[8:12]  # stateless: a resumed run draws the same rows
    assert rehearsal_indices(n, per_step, 2, seed=4) != rows[8:12]
    assert rehearsal_indices(0, per_step, 0, seed=3) == []
    assert default_responses_per_step(16, 8) == 16 and default_responses_per_step(128, 16) == 256
    assert default_responses_per_step(2, 2) == 1


def test_rehearsal_set_batches_and_round_trips_json():
    responses = [
        {"prompt": p, "prompt_ids": [5, 6 + p], "completion_ids": [7] * (1 + j), "ref_logprobs": [-0.5] * (1 + j)}
        for p in (0, 2)
        for j in range(2)
    ]
    rs = RehearsalSet(
        perfect=[0, 2],
        explore=[1, 3],
        responses=responses,
        presampled=4,
        presample_s=1.5,
        key={"k": 2},
        counts=[2, 1, 2, 0],
    )
    again = RehearsalSet.from_json(json.loads(json.dumps(rs.to_json())))
    assert again == rs and rs.histogram(2) == "0/2: 1, 1/2: 1, 2/2: 2"
    b = rs.batch(step=1, per_step=3, seed=0)
    assert len(b.completion_ids) == 3 and set(b.prompts) <= {0, 2}
    assert all(len(c) == len(lp) for c, lp in zip(b.completion_ids, b.ref_logprobs))
    assert RehearsalSet([], [0], [], 1, 0.0).batch(0, 3, 0) is None
    assert rs.metrics()["rehearsal/set_size"] == 2 and rs.metrics()["rehearsal/explore_size"] == 2


# --- the loss -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["forward_kl", "js"])
def test_rehearsal_loss_is_the_coefficient_times_the_token_mean_estimator(name):
    (reg,) = build_regularizers([{"name": name, "samples": "reference", "coef": 0.3}])
    assert on_reference_samples(reg)
    lp = torch.randn(3, 5, dtype=torch.float64).clamp(max=-0.1).requires_grad_()
    ref = torch.randn(3, 5, dtype=torch.float64).clamp(max=-0.1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float64)
    loss, m = rehearsal_loss(lp, mask, ref, [reg])
    u = torch.exp(lp - ref)
    g = u - torch.log(u) - 1 if name == "forward_kl" else 0.5 * (u * torch.log(u) - (u + 1) * torch.log((u + 1) / 2))
    want = 0.3 * (g * mask).sum() / mask.sum()
    assert torch.allclose(loss, want)
    assert m[f"rehearsal/{reg.label}/value"] == pytest.approx(float(want.detach()) / 0.3)
    (got,) = torch.autograd.grad(loss, lp)
    (exp,) = torch.autograd.grad(want, lp)
    assert torch.allclose(got, exp)


# --- (c) the rehearsal term's gradient in a learner step ------------------------------------------------------------


def _learner_step_delta(learner, data, start):
    """Apply one train_step with plain SGD (lr 1, no clipping) from ``start``; return -grad as parameter deltas."""
    learner.model.load_state_dict(start)
    params = [p for p in learner.model.parameters() if p.requires_grad]
    learner.opt = torch.optim.SGD(params, lr=1.0)
    metrics = learner.train_step(data)
    return {n: p.detach() - start[n] for n, p in learner.model.named_parameters()}, metrics


def test_learner_adds_the_rehearsal_gradient_of_coef_times_mean_forward_kl(tiny_dir):
    from rlkit.config import GRPOConfig
    from rlkit.workers.learner import LearnerCore

    coef, temperature = 0.5, 0.7
    cfg = GRPOConfig(group_size=2, max_grad_norm=None).model_dump()
    learner = LearnerCore(
        tiny_dir, cfg, [{"name": "forward_kl", "samples": "reference", "coef": coef}], temperature=temperature
    )
    (reg,) = learner.rehearsal_regs
    assert learner.policy_regs == []
    g = torch.Generator().manual_seed(1)
    tok = lambda n: torch.randint(6, 40, (n,), generator=g).tolist()  # noqa: E731
    prompts = [tok(4), tok(4), tok(3), tok(3)]
    comps = [tok(3), tok(5), tok(2), tok(4)]
    data = TrainBatch(
        step=0,
        prompt_ids=prompts,
        completion_ids=comps,
        scores=[1.0, 0.0, 0.0, 1.0],
        correct=[True, False, False, True],
        rollout_logprobs=[[-1.0] * len(c) for c in comps],
        refs={},
    )
    r_prompts, r_comps = [tok(5), tok(3), tok(5)], [tok(4), tok(1), tok(6)]
    r_ref = [(-2.0 - torch.rand(len(c), generator=g)).tolist() for c in r_comps]
    start = {n: p.detach().clone() for n, p in learner.model.state_dict().items()}

    plain, _ = _learner_step_delta(learner, data, start)
    with_reh, metrics = _learner_step_delta(
        learner,
        dataclasses.replace(
            data, rehearsal=RehearsalBatch(prompt_ids=r_prompts, completion_ids=r_comps, ref_logprobs=r_ref)
        ),
        start,
    )

    # independent: the model's own forward, log-softmax at the temperature, u - log u - 1 averaged over the tokens
    model = learner.model
    model.load_state_dict(start)
    model.zero_grad(set_to_none=True)
    total, n_tok = 0.0, 0
    for p, c, ref in zip(r_prompts, r_comps, r_ref):
        ids = torch.tensor([p + c])
        logits = model(input_ids=ids).logits[0, len(p) - 1 : len(p) + len(c) - 1] / temperature
        lp = torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(c)[:, None])[:, 0]
        u = torch.exp(lp - torch.tensor(ref, dtype=torch.float64))
        total = total + (u - torch.log(u) - 1).sum()
        n_tok += len(c)
    value = total / n_tok
    (coef * value).backward()
    assert metrics[f"rehearsal/{reg.label}/value"] == pytest.approx(float(value.detach()), rel=1e-5)
    assert metrics["rehearsal/batch_size"] == 3
    checked = 0
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        rehearsal_step = with_reh[name] - plain[name]  # SGD, lr 1: minus the rehearsal term's gradient
        assert torch.allclose(-rehearsal_step, param.grad.float(), atol=2e-6, rtol=1e-4), name
        checked += int(param.grad.abs().max() > 1e-6)
    assert checked > 5  # the term moves the parameters


# --- (d) config -----------------------------------------------------------------------------------------------------


def test_reference_samples_without_rehearsal_section_is_refused_with_the_key(capsys):
    from rlkit.cli import main

    over = ["regularizers=[{name: kl, estimator: k3}, {name: forward_kl, samples: reference}]"]
    with pytest.raises(ConfigError) as err:
        load_recipe(ROOT / "recipes" / "quickstart.yaml", over)
    assert err.value.path == "regularizers[1].samples" and "rehearsal:" in str(err.value)
    assert main(["check", str(ROOT / "recipes" / "quickstart.yaml"), *over]) == 2
    out = capsys.readouterr().err.strip()
    assert "\n" not in out and "regularizers[1].samples" in out and "rehearsal:" in out
    with pytest.raises(ConfigError, match=r"regularizers\[0\].samples"):  # kl on reference samples too
        load_recipe(DPH, ["rehearsal=null", "regularizers=[{name: kl, samples: reference}]"])
    recipe = load_recipe(DPH)
    assert recipe.rehearsal.k == 4 and recipe.rehearsal.responses_per_step is None


@pytest.mark.parametrize(
    "override,key,needle",
    [
        (["regularizers=[{name: kl, estimator: k3}]"], "rehearsal", "no regularizer has samples 'reference'"),
        (["algorithm=ppo"], "rehearsal", "'grpo' only"),
        (["learner.num_workers=2"], "rehearsal", "num_workers"),
        (
            ["regularizers=[{name: forward_kl, samples: reference, reference: {type: teacher, model: x}}]"],
            "regularizers[0].reference",
            "initial",
        ),
        (
            ["regularizers=[{name: forward_kl, samples: reference, weighting: {type: dads}}]"],
            "regularizers[0].weighting",
            "advantages",
        ),
        (["rehearsal.k=0"], "rehearsal.k", "greater than 0"),
    ],
)
def test_bad_rehearsal_recipes_name_the_key(override, key, needle):
    with pytest.raises(ConfigError) as err:
        load_recipe(DPH, override)
    assert err.value.path == key and needle in str(err.value)


# --- (b), (e) end to end --------------------------------------------------------------------------------------------

# untrained tiny policy, no SFT; the verifier (the first reward) is "the completion contains a digit", so that about
# a third of the prompts are solved k/k by the initial policy and both sets are non-empty
E2E = [
    "ray.mode=inprocess",
    "sft.enabled=false",
    "grpo.steps=3",
    "grpo.prompts_per_step=4",
    "grpo.group_size=4",
    "eval.before=false",
    "eval.num_prompts=4",
    "eval.n_samples=2",
    "eval.ks=[1,2]",
    "logging.plot=false",
    "logging.tensorboard=false",
    "data.params={n_train: 32, n_eval: 8}",
    "ray.torch_threads=1",
    "rollout.max_new_tokens=4",
    "rehearsal.k=2",
    "rehearsal.responses_per_step=3",
    "rehearsal.max_prompts=24",
    "logging.print_every=1",
    "checkpoint.save_final=false",
    'rewards=[{name: format, params: {pattern: ".*[0-9].*"}}, {name: numeric_match}]',
]


@pytest.fixture
def spy(monkeypatch):
    """Every learner step's TrainBatch (in-process: the driver calls LearnerCore.train_step directly)."""
    from rlkit.workers.learner import LearnerCore

    seen, original = [], LearnerCore.train_step

    def recording(self, data):
        seen.append(data)
        return original(self, data)

    monkeypatch.setattr(LearnerCore, "train_step", recording)
    monkeypatch.chdir(ROOT)
    return seen


def test_grpo_dph_trains_on_d_exp_and_rehearses_d_pef(tmp_path, spy, monkeypatch, capsys):
    from rlkit.cli import main
    from rlkit.utils.metrics import read_metrics

    out = tmp_path / "run"
    assert main(["train", "recipes/grpo_dph.yaml", f"output_dir={out}", *E2E, "checkpoint.save_every=2"]) == 0
    label = build_regularizers(load_recipe(DPH).regularizers)[0].label
    rows = read_metrics(out / "metrics.jsonl")
    head = rows[0]
    assert head["step"] == 0 and head["rehearsal/set_size"] > 0 and head["rehearsal/explore_size"] >= 4
    assert head["rehearsal/set_size"] + head["rehearsal/explore_size"] == 32 and head["rehearsal/presample_s"] > 0
    assert [r["step"] for r in rows[1:]] == [1, 2, 3]
    assert all(math.isfinite(r[f"rehearsal/{label}/value"]) and r["rehearsal/batch_size"] == 3 for r in rows[1:])
    assert rows[-1][f"rehearsal/{label}/value"] > 0  # the policy moved away from pi_0 on the rehearsal responses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rehearsal"]["rehearsal/set_size"] == head["rehearsal/set_size"]

    cache = json.loads((out / "rehearsal" / "presample.json").read_text())
    perfect = set(cache["perfect"])
    assert perfect and not perfect & set(cache["explore"]) and len(cache["responses"]) == 2 * len(perfect)
    assert head["rehearsal/presampled"] == 24 and set(range(24, 32)) <= set(cache["explore"])  # not pre-sampled: D_exp
    pef_prompts = {tuple(r["prompt_ids"]) for r in cache["responses"]}
    assert len(spy) == 3
    for data in spy:  # GRPO rows from D_exp only; rehearsal rows from D_pef only, with their stored log pi_0
        assert not {tuple(p) for p in data.prompt_ids} & pef_prompts
        reh = data.rehearsal
        assert set(reh.prompts) <= perfect and {tuple(p) for p in reh.prompt_ids} <= pef_prompts
        stored = {(tuple(r["prompt_ids"]), tuple(r["completion_ids"])): r["ref_logprobs"] for r in cache["responses"]}
        for p, c, lp in zip(reh.prompt_ids, reh.completion_ids, reh.ref_logprobs):
            assert stored[(tuple(p), tuple(c))] == lp

    # --resume: the pre-sampled set is loaded from the cache, never sampled again
    import rlkit.trainer.rehearsal as rehearsal

    def no_presample(*args, **kwargs):
        raise AssertionError("pre-sampled again on resume")

    monkeypatch.setattr(rehearsal, "presample", no_presample)
    spy.clear()
    capsys.readouterr()
    assert main(["train", "recipes/grpo_dph.yaml", f"output_dir={out}", *E2E, "grpo.steps=4", "--resume"]) == 0
    assert "loaded the pre-sampled set" in capsys.readouterr().out
    assert [d.step for d in spy] == [2, 3]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert all(not {tuple(p) for p in d.prompt_ids} & pef_prompts for d in spy)
