"""GSPO (Zheng et al. 2025, arXiv 2507.18071), the sequence-level policy loss: its value against a loop over
sequences, its gradient against the closed form and against the paper's GSPO-token form, the clip, the learner
and the recipe checks."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit._config import ConfigError
from rlkit.config import build_recipe
from rlkit.objectives.gspo import gspo_loss, sequence_ratio
from rlkit.regularizers import PolicyBatch, build_regularizers

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])


def _batch(shift=0.05, adv=(1.0, -0.5, 2.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(3, 4, generator=g) * 2
    lp = (old + shift * torch.randn(3, 4, generator=g)).requires_grad_(True)
    return PolicyBatch(logprobs=lp, old_logprobs=old, mask=MASK, advantages=torch.tensor(adv), ref_logprobs=old - 0.1)


def test_value_is_the_mean_over_sequences_of_the_clipped_sequence_term():
    b = _batch(shift=0.3)
    lo, hi = 0.02, 0.03
    loss, m = gspo_loss(b, clip_low=lo, clip_high=hi)
    loss = loss.detach()
    want = []
    for i in range(3):
        n = int(MASK[i].sum())
        s = math.exp(sum(float(b.logprobs[i, t].detach() - b.old_logprobs[i, t]) for t in range(n)) / n)
        a = float(b.advantages[i])
        want.append(max(-a * s, -a * min(max(s, 1 - lo), 1 + hi)))
    assert float(loss) == pytest.approx(sum(want) / 3, rel=1e-6)
    assert m["policy/seq_ratio_mean"] == pytest.approx(float(sequence_ratio(b.logprobs, b.old_logprobs, MASK).mean()))


def test_unclipped_gradient_weights_every_token_of_a_sequence_alike():
    """``d loss / d log pi_it = -A_i s_i / (|y_i| B)`` on completion tokens, 0 on padding; and the same as the
    paper's GSPO-token objective ``sg(s_i) pi_it / sg(pi_it)`` averaged per sequence."""
    b = _batch(shift=0.05)
    loss, _ = gspo_loss(b, clip_low=10.0, clip_high=10.0)  # a clip that never binds
    (grad,) = torch.autograd.grad(loss, b.logprobs)
    s = sequence_ratio(b.logprobs, b.old_logprobs, MASK).detach()
    n = MASK.sum(-1)
    want = (-b.advantages * s / n / 3).unsqueeze(-1) * MASK
    torch.testing.assert_close(grad, want)
    lp = b.logprobs
    token_form = s.unsqueeze(-1) * torch.exp(lp - lp.detach())
    tok_loss = (-(b.advantages.unsqueeze(-1) * token_form * MASK).sum(-1) / n).mean()
    (grad_tok,) = torch.autograd.grad(tok_loss, lp)
    torch.testing.assert_close(grad, grad_tok)


def test_a_clipped_sequence_gets_no_gradient():
    b = _batch(shift=0.0, adv=(1.0, -1.0, 1.0))
    with torch.no_grad():
        b.logprobs[0, :3] += 0.2  # s_0 = e^0.2 > 1 + clip with A > 0: clipped
        b.logprobs[1] -= 0.2  # s_1 = e^-0.2 < 1 - clip with A < 0: clipped
    loss, m = gspo_loss(b, clip_low=0.01, clip_high=0.01)
    (grad,) = torch.autograd.grad(loss, b.logprobs)
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() == 0
    assert grad[2, 0] != 0  # s_2 = 1, inside the range
    assert m["policy/clip_frac"] == pytest.approx(2 / 3)


def test_regularizers_join_and_token_advantages_are_refused():
    b = _batch()
    regs = build_regularizers([{"name": "kl", "estimator": "k3", "coef": 0.1}])
    plain, _ = gspo_loss(b)
    with_kl, m = gspo_loss(b, regs, aggregation="token-mean")
    assert float(with_kl - plain) == pytest.approx(0.1 * m["kl_k3/value"], abs=1e-6)  # float32 sums of O(1) terms
    with pytest.raises(ValueError, match=r"\[B\]"):
        gspo_loss(PolicyBatch(logprobs=b.logprobs, old_logprobs=b.old_logprobs, mask=MASK, advantages=torch.ones(3, 4)))


def test_the_learner_runs_gspo_and_the_recipe_checks_it(tiny_dir):
    from rlkit.types import ReferenceOutput, TrainBatch
    from rlkit.workers.learner import LearnerCore

    recipe = build_recipe({"grpo": {"policy_loss": "gspo", "group_size": 2, "clip_low": 3e-4, "clip_high": 4e-4}})
    core = LearnerCore(tiny_dir, recipe.grpo, "kl_k3")
    comps = [[6, 7], [8], [9, 10, 11], [12]]
    m = core.train_step(
        TrainBatch(
            step=0,
            prompt_ids=[[7, 8, 9]] * 2 + [[7, 9, 9]] * 2,
            completion_ids=comps,
            scores=[1.0, 0.0, 0.5, 0.0],
            correct=[1.0, 0.0, 0.0, 0.0],
            rollout_logprobs=[[-2.0] * len(c) for c in comps],
            refs={"initial": ReferenceOutput(logprobs=torch.full((4, 3), -2.1))},
        )
    )
    assert m["policy/seq_ratio_mean"] == pytest.approx(1.0)  # one update on the sampling policy: s_i = 1
    assert math.isfinite(m["loss/total"]) and m["skipped_updates"] == 0
    with pytest.raises(ConfigError, match=r"grpo\.tis_cap"):
        build_recipe({"grpo": {"policy_loss": "gspo", "tis_cap": 2.0}})
    with pytest.raises(ConfigError, match=r"ppo\.policy_loss.*per token"):
        build_recipe({"algorithm": "ppo", "ppo": {"policy_loss": "gspo"}, "regularizers": "kl_reward"})
