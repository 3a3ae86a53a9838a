"""docs/extending.md, the algorithm axes and the divergence axis: each new component is one module written here into
a temporary directory, registered by its own decorator, and named by a recipe through ``plugins:``. The tests show
that it validates, that a learner built from the recipe uses it (in-process and in a Ray actor), and that its
numbers are the ones the module defines."""

from __future__ import annotations

import textwrap

import pytest
import torch

from rlkit._config import ConfigError
from rlkit.config import build_recipe
from rlkit.plugins import ENV
from rlkit.types import ReferenceOutput, TrainBatch

# ---- the three modules of docs/extending.md, verbatim -------------------------------------------------------------
DIVERGENCE = '''
import torch
from typing import Literal

from rlkit.regularizers import PolicyBatch, Regularizer, RegularizerConfig, register


class HalfSquareConfig(RegularizerConfig):
    name: Literal["half_square"] = "half_square"


@register("half_square")
class HalfSquare(Regularizer):
    """0.5 (log pi - log pi_ref)^2 per token: k2's value, differentiated as written (the reverse KL's gradient
    per visited state on policy samples)."""

    Config = HalfSquareConfig

    def requires(self):
        return {"logprobs", "mask", "ref_logprobs"}

    def divergence(self, batch: PolicyBatch) -> torch.Tensor:
        ref = batch.reference("ref_logprobs", self.reference_key, self.label)
        return 0.5 * (batch.logprobs - ref) ** 2
'''

ADVANTAGE = '''
import torch

from rlkit.algorithms import ADVANTAGES
from rlkit.algorithms.group import GroupAdvantage


@ADVANTAGES.register("sign")
class SignAdvantage(GroupAdvantage):
    """A_i = sign(r_i - mean_g r): only the direction of each sample's reward against its group's."""

    def group(self, rewards, group_size):
        g = rewards.float().view(-1, group_size)
        return torch.sign(g - g.mean(1, keepdim=True)).reshape(-1)
'''

POLICY_LOSS = '''
from rlkit.algorithms import POLICY_LOSSES, PolicyLoss
from rlkit.objectives import aggregate, masked_mean


@POLICY_LOSSES.register("vanilla_pg")
class VanillaPolicyGradient(PolicyLoss):
    """-A ratio per token, no clipping (REINFORCE with an importance ratio), plus the loss-placed regularizers."""

    def __call__(self, batch, regularizers=(), entropy=None, token_weights=None):
        ratio = (batch.logprobs - batch.old_logprobs.detach()).exp()
        loss = aggregate(-batch.advantages.unsqueeze(-1) * ratio, batch.mask, self.cfg.aggregation)
        metrics = {"loss/policy": float(loss.detach()), "vanilla_pg/ratio_mean": float(masked_mean(ratio, batch.mask))}
        for reg in regularizers:
            out = reg(batch)
            loss = loss + aggregate(out.per_token, batch.mask, self.cfg.aggregation)
            metrics.update(out.metrics)
        return loss, metrics
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Write a module into ``tmp_path``; the exported plugin list is restored after the test."""
    monkeypatch.delenv(ENV, raising=False)

    def write(name: str, source: str) -> str:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


def _data(B=4):
    g = torch.Generator().manual_seed(0)
    comps = [torch.randint(6, 20, (1 + i % 3,), generator=g).tolist() for i in range(B)]
    T = max(len(c) for c in comps)
    return TrainBatch(
        step=0,
        prompt_ids=[[7, 8, 9]] * 2 + [[7, 9, 9]] * 2,
        completion_ids=comps,
        scores=[1.0, 0.0, 0.5, 0.0],
        correct=[1.0, 0.0, 0.0, 0.0],
        rollout_logprobs=[[-2.0] * len(c) for c in comps],
        refs={"initial": ReferenceOutput(logprobs=torch.full((B, T), -2.1))},
    )


# ---- divergence ---------------------------------------------------------------------------------------------------
def test_a_new_divergence_is_one_module(plugin):
    from rlkit.regularizers import PolicyBatch, build_regularizers

    path = plugin("half_square", DIVERGENCE)
    recipe = build_recipe({"plugins": [path], "regularizers": [{"name": "half_square", "coef": 0.3}]})
    (mine,) = build_regularizers(recipe.regularizers)
    (k2,) = build_regularizers([{"name": "kl", "estimator": "k2", "coef": 0.3}])
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -4.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    batch = PolicyBatch(logprobs=lp, mask=mask, ref_logprobs=torch.tensor([[-1.2, -1.0, -3.0], [-0.3, -2.5, -2.0]]))
    out, ref_out = mine(batch), k2(batch)
    torch.testing.assert_close(out.per_token, ref_out.per_token)  # the same value as k2 ...
    (g_mine,) = torch.autograd.grad(out.per_token.sum(), lp)
    (g_k2,) = torch.autograd.grad(ref_out.per_token.sum(), lp)
    torch.testing.assert_close(g_mine, g_k2)  # ... and the same gradient, d = log pi - log pi_ref per token
    assert out.metrics["half_square/coef"] == pytest.approx(0.3)
    with pytest.raises(ConfigError, match=r"regularizers\[0\]"):
        build_recipe({"regularizers": [{"name": "half_square_typo"}]})


@pytest.mark.ray
def test_a_plugin_reaches_a_ray_actor(plugin, cluster, tiny_dir):
    """The driver exports the recipe's plugins; an actor started afterwards imports them before its regularizers
    are built (the cluster was started before the plugin existed)."""
    import ray

    from rlkit.workers import Learner

    path = plugin("half_square_actor", DIVERGENCE.replace('"half_square"', '"half_square_actor"'))
    recipe = build_recipe({"plugins": [path], "regularizers": [{"name": "half_square_actor"}]})
    learner = Learner.remote(tiny_dir, recipe.grpo, recipe.regularizers)
    assert ray.get(learner.needs.remote()).labels == ("half_square_actor",)


# ---- advantage estimator ------------------------------------------------------------------------------------------
def test_a_new_advantage_estimator_is_one_module(plugin, tiny_dir):
    from rlkit.workers.learner import LearnerCore

    path = plugin("sign_advantage", ADVANTAGE)
    recipe = build_recipe({"plugins": [path], "grpo": {"advantage": "sign", "group_size": 2}})
    core = LearnerCore(tiny_dir, recipe.grpo, "kl_k3")
    assert type(core.advantage).__name__ == "SignAdvantage"
    m = core.train_step(_data())
    # groups (1, 0) and (0.5, 0): signs (+1, -1, +1, -1), so every |A| is 1
    assert m["advantage/abs_mean"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match=r"ppo\.advantage.*group-relative"):  # PPO needs a critic-based one
        build_recipe({"algorithm": "ppo", "ppo": {"advantage": "sign"}, "regularizers": "kl_reward"})
    with pytest.raises(ConfigError, match=r"grpo\.advantage.*registered: .*sign"):
        build_recipe({"grpo": {"advantage": "signn"}})


# ---- policy loss --------------------------------------------------------------------------------------------------
def test_a_new_policy_loss_is_one_module(plugin, tiny_dir):
    from rlkit.workers.learner import LearnerCore

    path = plugin("vanilla_pg", POLICY_LOSS)
    recipe = build_recipe({"plugins": [path], "grpo": {"policy_loss": "vanilla_pg", "group_size": 2}})
    core = LearnerCore(tiny_dir, recipe.grpo, "kl_k3")
    m = core.train_step(_data())
    # one update on the rollout's own policy: the ratio is exactly 1 on every token
    assert m["vanilla_pg/ratio_mean"] == pytest.approx(1.0)
    assert "policy/clip_frac" not in m  # the clipped surrogate's metrics are gone: the plugin's loss ran
    with pytest.raises(ConfigError, match=r"grpo\.policy_loss"):
        build_recipe({"grpo": {"policy_loss": "vanila_pg"}})


def test_a_broken_plugin_is_named(plugin):
    path = plugin("broken", "raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"plugins\[0\].*broken.*RuntimeError: boom"):
        build_recipe({"plugins": [path]})
    with pytest.raises(ConfigError, match=r"plugins\[1\].*no_such_module_here"):
        build_recipe({"plugins": ["json", "no_such_module_here"]})
