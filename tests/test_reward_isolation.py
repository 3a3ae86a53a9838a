"""Error isolation in ``CompositeReward``: on_error (zero | fail), timeout_s, NaN scores, failure metrics."""

from __future__ import annotations

import math
import threading
import time

import pytest

from reward_models import CompositeReward, Reward, RewardComponentError, register_reward
from reward_models import registry

RELEASE = threading.Event()  # lets the background threads of timed-out calls finish at teardown


@pytest.fixture(autouse=True)
def test_rewards(monkeypatch):
    """Test-only rewards in a scratch copy of the registry (removed after each test)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    RELEASE.clear()
    calls: list[int] = []

    @register_reward("fragile")
    class Fragile(Reward):
        """1.0 per sample; raises for a batch containing 'boom', NaN/inf for 'nan'/'inf', hangs on 'hang'."""

        def score_batch(self, prompts, completions, answers, **kwargs):
            calls.append(len(completions))
            if any("boom" in c for c in completions):
                raise RuntimeError("boom in batch")
            if any("hang" in c for c in completions):
                RELEASE.wait(10)
            return [float("nan") if c == "nan" else float("inf") if c == "inf" else 1.0 for c in completions]

    @register_reward("steady")
    class Steady(Reward):
        def score_batch(self, prompts, completions, answers, **kwargs):
            return [0.5] * len(completions)

    yield calls
    RELEASE.set()


def comp(**spec):
    return CompositeReward([{"name": "fragile", "weight": 2.0, **spec}, {"name": "steady"}])


def test_raising_samples_get_zero_and_are_counted(test_rewards):
    result = comp().compute(["p"] * 4, ["ok", "boom", "fine", "boom!"])
    assert result.components == {"fragile": [1.0, 0.0, 1.0, 0.0], "steady": [0.5] * 4}
    assert result.totals == [2.5, 0.5, 2.5, 0.5]
    assert result.failures == {"fragile": 2, "steady": 0}
    metrics = result.metrics()
    assert metrics["reward/failures/fragile"] == 2 and metrics["reward/failures/steady"] == 0
    assert test_rewards == [4, 1, 1, 1, 1]  # one batch call, then one call per sample


def test_no_failures_means_one_batch_call_and_zero_metrics(test_rewards):
    result = comp().compute(["p"] * 3, ["a", "b", "c"])
    assert result.failures == {"fragile": 0, "steady": 0} and test_rewards == [3]
    assert result.metrics()["reward/failures/fragile"] == 0


def test_fail_mode_names_the_key_and_sample_index():
    reward = CompositeReward([{"name": "fragile", "key": "tests", "on_error": "fail"}])
    with pytest.raises(RewardComponentError, match=r"'tests' failed on sample 2: RuntimeError: boom") as info:
        reward.compute(["p"] * 3, ["ok", "ok", "boom"])
    assert info.value.key == "tests" and info.value.index == 2
    assert isinstance(info.value.__cause__, RuntimeError)
    assert reward(["p"], ["ok"]) == [1.0]  # fine batches are unaffected


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_scores_are_errors(bad):
    result = comp().compute(["p"] * 3, ["a", bad, "c"])
    assert result.components["fragile"] == [1.0, 0.0, 1.0] and result.failures["fragile"] == 1
    assert all(math.isfinite(t) for t in result.totals)
    with pytest.raises(RewardComponentError, match=r"'fragile' failed on sample 1: ValueError: non-finite"):
        comp(on_error="fail").compute(["p"] * 3, ["a", bad, "c"])


def test_timeout_isolates_the_hanging_sample():
    start = time.monotonic()
    result = comp(timeout_s=0.5).compute(["p"] * 4, ["a", "hang", "b", "c"])
    elapsed = time.monotonic() - start
    assert result.components["fragile"] == [1.0, 0.0, 1.0, 1.0]
    assert result.failures == {"fragile": 1, "steady": 0}
    assert elapsed < 0.5 * 2 + 1.0  # the batch call, then one timed-out sample


def test_timeout_fallback_has_a_total_budget():
    from reward_models.composite import FALLBACK_BUDGET_FACTOR

    start = time.monotonic()
    result = comp(timeout_s=0.3).compute(["p"] * 10, ["hang"] * 10)
    elapsed = time.monotonic() - start
    assert result.components["fragile"] == [0.0] * 10 and result.failures["fragile"] == 10
    assert elapsed < 0.3 * (1 + FALLBACK_BUDGET_FACTOR) + 1.0  # not 10 x 0.3 s per sample on top of the batch


def test_timeout_in_fail_mode_names_the_hanging_sample():
    with pytest.raises(RewardComponentError, match=r"'fragile' failed on sample 1: TimeoutError"):
        comp(timeout_s=0.3, on_error="fail").compute(["p"] * 3, ["a", "hang", "b"])


def test_timeout_does_not_affect_fast_rewards(test_rewards):
    result = comp(timeout_s=5).compute(["p"] * 2, ["a", "b"])
    assert result.components["fragile"] == [1.0, 1.0] and test_rewards == [2]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"on_error": "ignore"}, "rewards[0].on_error: must be one of 'zero', 'fail', got 'ignore'"),
        ({"timeout_s": 0}, "rewards[0].timeout_s: must be a positive number"),
        ({"timeout_s": "1s"}, "rewards[0].timeout_s"),
        ({"timeout_s": True}, "rewards[0].timeout_s"),
        ({"timeout_s": float("inf")}, "rewards[0].timeout_s"),
    ],
)
def test_bad_isolation_specs(spec, message):
    with pytest.raises(ValueError) as info:
        CompositeReward([{"name": "fragile", **spec}])
    assert message in str(info.value)


def test_spec_keys_from_the_recipe_are_accepted():
    specs = [{"name": "fragile", "on_error": "zero", "timeout_s": 2.0}, {"name": "steady", "timeout_s": None}]
    reward = CompositeReward(specs)
    assert [(c.on_error, c.timeout_s) for c in reward.components] == [("zero", 2.0), ("zero", None)]
