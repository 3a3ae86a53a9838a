"""The online trainer's parts on their own (rlkit/trainer/online.py and the modules it is made of): the typed batches,
the reference plan, the prompt stream's checkpoint position, the weight-sync strategies, the learner's group check."""

import pickle
import random
from dataclasses import replace
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from rlkit.trainer.data_stream import PromptStream
from rlkit.trainer.reference_plan import ReferencePlan
from rlkit.trainer.weight_sync import (
    InProcessCopySync,
    LearnerGroupSync,
    ObjectStoreSync,
    SharedModuleSync,
    make_weight_sync,
)
from rlkit.types import LearnerNeeds, ReferenceOutput, RehearsalBatch, RolloutBatch, ScoredBatch, TrainBatch
from rlkit.utils.train_state import python_random_from_json
from rlkit.workers.local import LocalActor


def test_types_import_without_torch_and_pickle():
    code = "import sys, rlkit.types\nassert 'torch' not in sys.modules, 'torch'\nprint('ok')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    batch = TrainBatch(
        step=3,
        prompt_ids=[[1, 2]] * 2,
        completion_ids=[[3], [4, 5]],
        scores=[1.0, 0.0],
        correct=[True, False],
        rollout_logprobs=[[-1.0], [-2.0, -3.0]],
        refs={"initial": ReferenceOutput(logprobs=torch.zeros(2, 2), hidden=torch.ones(2, 2, 3), head_version=1)},
        rehearsal=RehearsalBatch([[1]], [[2]], [[-0.5]], [0]),
        group=[0, 0],
    )
    again = pickle.loads(pickle.dumps(batch))
    assert again.step == 3 and again.group == [0, 0] and again.rehearsal == batch.rehearsal
    assert torch.equal(again.refs["initial"].hidden, batch.refs["initial"].hidden)
    assert again.refs["initial"].logits is None and again.refs["initial"].head_version == 1


def test_rollout_batch_groups_completions_by_prompt():
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]
    comps = [{"prompt_ids": [i // 2], "token_ids": [i], "text": f"t{i}", "logprobs": [-float(i)]} for i in range(4)]
    ro = RolloutBatch.from_completions(rows, comps, 2)
    assert ro.group == [0, 0, 1, 1] and len(ro) == 4
    assert ro.prompts == ["1+1=", "1+1=", "2+2=", "2+2="] and ro.answers == ["2", "2", "4", "4"]
    assert ro.texts == ["t0", "t1", "t2", "t3"] and ro.completion_ids == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="3 completions for 2 prompts x 2"):
        RolloutBatch.from_completions(rows, comps[:3], 2)
    scored = ScoredBatch(
        totals=[1.0, 0.0, 0.5, 0.5],
        components={"m": [1.0, 0.0, 0.5, 0.5]},
        failures={"m": 1},
        correct=[True, False, False, False],
    )
    metrics = scored.metrics()
    assert metrics["reward/m"] == 0.5 and metrics["reward/failures/m"] == 1.0


NEEDS = LearnerNeeds(
    ref_logprobs=("soup", "initial"),
    ref_logits=("teacher",),
    ref_hidden=("teacher",),
    labels=("a", "b", "c"),
    references={
        "initial": {"type": "initial", "refresh_every": None},
        "soup": {"type": "soup", "refresh_every": 2, "refresh_rate": 0.5},
        "teacher": {"type": "teacher", "model": "x"},
    },
)


def test_reference_plan_decides_once_what_each_reference_sends():
    plan = ReferencePlan.from_needs(NEEDS, kl_to_initial=True)
    assert plan.spawned == ("initial", "soup", "teacher") and plan.fixed == ("initial", "teacher")
    assert [plan.sends(k) for k in plan.spawned] == ["logprobs", "logprobs", "hidden"]
    assert plan.due(1) == {} and plan.due(2) == {"soup": 0.5} and plan.initial_source() == "worker"
    # eval.kl_to_initial adds "initial" without a regularizer asking for it; the needs are not modified
    needs = replace(
        NEEDS, ref_logprobs=("soup",), ref_logits=(), ref_hidden=(), references={"soup": NEEDS.references["soup"]}
    )
    plan = ReferencePlan.from_needs(needs, kl_to_initial=True)
    assert plan.spawned == ("initial", "soup") and plan.specs["initial"] == {"type": "initial"}
    assert "initial" not in needs.references
    assert ReferencePlan.from_needs(needs, kl_to_initial=False).initial_source() is None
    # a LoRA learner serves "initial" itself: no worker for it
    lora = ReferencePlan.from_needs(replace(needs, served=("initial",)), kl_to_initial=True)
    assert lora.spawned == ("soup",) and lora.initial_source() == "learner"


def test_prompt_stream_checkpoints_the_position_before_a_prefetched_batch():
    rows = [{"prompt": str(i)} for i in range(10)]
    stream = PromptStream(rows, list(range(10)), per_step=4, seed=0)
    first = stream.draw()
    order, cursor, rng = stream.state(prefetched=False)
    assert cursor == 4 and len(first) == 4 and sorted(order) == list(range(10))
    second = stream.draw()  # drawn ahead (prefetched): a checkpoint holds the position before it
    assert stream.state(prefetched=True) == (order, cursor, rng)
    resumed = PromptStream(rows, [], per_step=4, seed=123)
    resumed.restore(*stream.state(prefetched=True))
    assert resumed.draw() == second and resumed.draw() == stream.draw()  # the third draw reshuffles, identically
    assert stream.cursor == 4  # 2 left of 10 after 8: reshuffled, the first 4 of the new order
    own = random.Random(0)
    own.shuffle(ids := list(range(10)))  # the stream's own generator: the first draw is Random(seed)'s shuffle
    assert first == [rows[i] for i in ids[:4]]
    assert isinstance(python_random_from_json(rng), tuple)


class _Learner:
    def __init__(self):
        self.calls = 0

    def get_weights(self, copy=True):
        self.calls += 1
        self.copied = copy
        return {"w": self.calls}


class _Worker:
    def __init__(self):
        self.got = []

    def update_weights(self, weights, version):
        self.got.append((weights, version))
        return version

    def refresh(self, weights, rate):
        self.got.append(("refresh", weights, rate))


def test_weight_sync_strategies():
    plan = ReferencePlan.from_needs(NEEDS, kl_to_initial=False)
    learner, rollout, soup = LocalActor(_Learner()), LocalActor(_Worker()), LocalActor(_Worker())
    refs = {"initial": LocalActor(_Worker()), "soup": soup, "teacher": LocalActor(_Worker())}
    shared = make_weight_sync(True, False, learner, [rollout], refs, plan, version=0)
    assert type(shared) is SharedModuleSync
    shared.after_step(1)  # nothing due: the learner's weights are never fetched, the engine only moves its version
    assert learner.instance.calls == 0 and rollout.instance.got == [(None, 1)] and shared.version == 1
    shared.after_step(2)  # the soup is due at step 2: weights fetched once, for it
    assert learner.instance.calls == 1 and soup.instance.got == [("refresh", {"w": 1}, 0.5)]
    store = make_weight_sync(False, False, learner, [rollout], refs, plan, version=0)
    assert (
        type(store) is ObjectStoreSync
        and type(make_weight_sync(False, True, learner, [], {}, plan, 0)) is LearnerGroupSync
    )
    store.after_step(3)
    assert rollout.instance.got[-1] == ({"w": 2}, 3) and store.version == 3 and learner.instance.copied
    local = make_weight_sync(False, False, learner, [rollout], refs, plan, version=0, inprocess=True)
    assert type(local) is InProcessCopySync
    local.after_step(4)  # the soup is due at step 4 too: one uncloned fetch serves it and the engine
    assert learner.instance.calls == 3 and not learner.instance.copied and local.version == 4
    assert rollout.instance.got[-1] == ({"w": 3}, 4) and soup.instance.got[-1] == ("refresh", {"w": 3}, 0.5)
    assert local.weights is None  # nothing kept for a re-send: an in-process worker is never restarted


def test_learner_checks_that_groups_are_consecutive_blocks():
    from rlkit.workers.learner import LearnerCore

    from rlkit.config import GRPOConfig

    core = SimpleNamespace(cfg=GRPOConfig(group_size=2))

    def batch(group, n=4):
        n = len(group) if group is not None else n
        return TrainBatch(
            step=0,
            prompt_ids=[[1]] * n,
            completion_ids=[[2]] * n,
            scores=[0.0] * n,
            correct=[0.0] * n,
            rollout_logprobs=[[-1.0]] * n,
            group=group,
        )

    LearnerCore._check_groups(core, batch([0, 0, 1, 1]))
    LearnerCore._check_groups(core, batch(None))  # not given: the rows are taken as consecutive groups
    for bad in ([0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1]):
        with pytest.raises(ValueError, match="groups of group_size=2"):
            LearnerCore._check_groups(core, batch(bad))


def test_prefetch_shortens_the_gil_switch_interval_while_it_lives():
    from rlkit.trainer.data_stream import SWITCH_INTERVAL_S, Prefetch

    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL_S  # the interpreter's default, 5 ms
    for leave in ("close", "cancel"):
        pre = Prefetch()
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S
        pre.submit(lambda x: x + 1, 1)
        assert pre.take() == 2
        getattr(pre, leave)()
        assert sys.getswitchinterval() == before, leave
