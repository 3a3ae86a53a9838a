"""``rollout.dtype``: a rollout engine in a dtype of its own (e.g. bfloat16 rollouts for a float32 learner) keeps its
own copy of the policy in that dtype, refreshed after every step; left unset, in-process rollouts share the learner's
module as before."""

import json
from pathlib import Path

import pytest
import torch

from rlkit.config import load_recipe
from rlkit.trainer.online import OnlineTrainer
from rlkit.trainer.weight_sync import InProcessCopySync, SharedModuleSync

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "sft.enabled=false",
    "grpo.steps=2",
    "grpo.prompts_per_step=4",
    "grpo.group_size=4",
    "grpo.learning_rate=0.01",  # large enough that the bfloat16 copy must change to follow the learner
    "eval.before=false",
    "logging.plot=false",
    "logging.tensorboard=false",
    "checkpoint.save_final=false",
    "data.params={n_train: 32, n_eval: 4}",
    "ray.mode=inprocess",
    "ray.torch_threads=1",
]


def trainer(tmp_path, *overrides) -> OnlineTrainer:
    return OnlineTrainer(
        load_recipe(ROOT / "recipes" / "quickstart.yaml", [f"output_dir={tmp_path}", *FAST, *overrides])
    )


@pytest.mark.parametrize("override", [[], ["rollout.dtype=float32"]])
def test_rollout_in_the_model_dtype_shares_the_learner_module(tmp_path, override):
    t = trainer(tmp_path, *override)
    t.setup()
    assert t.shared and type(t.sync) is SharedModuleSync
    assert t.rollout_workers[0].instance.engine.model is t.learner.instance.model


def test_bf16_rollout_engine_holds_its_own_copy_refreshed_every_step(tmp_path, capsys):
    t = trainer(tmp_path, "rollout.dtype=bfloat16", "grpo.tis_cap=2.0")
    t.setup()
    learner, engine = t.learner.instance.model, t.rollout_workers[0].instance.engine.model
    assert not t.shared and type(t.sync) is InProcessCopySync and engine is not learner
    assert {p.dtype for p in engine.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in learner.parameters()} == {torch.float32}
    start = {k: v.clone() for k, v in engine.state_dict().items()}
    t.fit()
    after = engine.state_dict()
    want = {k: v.detach().to(torch.bfloat16) for k, v in learner.state_dict().items()}
    assert all(torch.equal(after[k], want[k]) for k in want)  # the learner's weights after the last step, cast
    assert any(not torch.equal(after[k], start[k]) for k in start)  # and the copy did move
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # sampled from the bfloat16 copy: the learner's float32 log-probs of those tokens differ a little; TIS weighs them
    assert all(0 < r["rollout/logprob_gap"] < 0.1 for r in rows)
    assert all(0.9 < r["rollout/tis_weight_mean"] < 1.1 for r in rows)
    assert "own bfloat16 copy" in capsys.readouterr().out


def test_rollout_dtype_without_tis_cap_says_how_to_correct(tmp_path, capsys):
    t = trainer(tmp_path, "rollout.dtype=bfloat16")
    t.setup()
    assert "set grpo.tis_cap" in capsys.readouterr().out


def test_async_in_process_copy_follows_the_learner_without_sharing_its_tensors(tmp_path):
    """``grpo.async_rollout`` in-process: the engine's float32 copy is refreshed from the learner's live tensors (no
    clone in between), so it must equal them after every step and never alias them (a shared storage would let the
    learner's next optimizer step change the weights a running ``generate`` samples with)."""
    t = trainer(tmp_path, "grpo.async_rollout=true")
    t.setup()
    learner, engine = t.learner.instance.model, t.rollout_workers[0].instance.engine.model
    assert type(t.sync) is InProcessCopySync and engine is not learner
    start = {k: v.clone() for k, v in engine.state_dict().items()}
    t.fit()
    mine, theirs = engine.state_dict(), learner.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert any(not torch.equal(mine[k], start[k]) for k in start)
    own = {v.untyped_storage().data_ptr() for v in mine.values()}
    assert own.isdisjoint(v.untyped_storage().data_ptr() for v in theirs.values())
