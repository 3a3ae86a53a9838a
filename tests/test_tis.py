"""Truncated importance sampling (rollout/learner mismatch correction) and token weights in the policy loss."""

import math

import pytest
import torch

from rlkit.functional import tis_weights
from rlkit.objectives import policy_loss
from rlkit.regularizers import PolicyBatch


def test_tis_weights_are_truncated_ratios_zero_on_padding():
    learner = torch.log(torch.tensor([[0.5, 0.9, 0.2, 0.3]]))
    rollout = torch.log(torch.tensor([[0.25, 0.9, 0.4, 0.3]]))
    mask = torch.tensor([[1, 1, 1, 0]])
    w, m = tis_weights(learner, rollout, mask, cap=1.5)
    # ratios 2.0 (cut to 1.5), 1.0, 0.5; padding 0
    torch.testing.assert_close(w, torch.tensor([[1.5, 1.0, 0.5, 0.0]]))
    assert m["rollout/tis_clip_frac"] == pytest.approx(1 / 3)
    assert m["rollout/tis_weight_mean"] == pytest.approx(3.0 / 3)
    with pytest.raises(ValueError, match="cap"):
        tis_weights(learner, rollout, mask, cap=0)


def test_tis_weighted_gradient_matches_independent_reweighting():
    """d/dtheta of the TIS-weighted surrogate = sum_t w_t * d/dtheta(per-token surrogate) / n_tokens, computed
    here token by token with autograd (independent of policy_loss's internals); weights carry no gradient."""
    torch.manual_seed(0)
    theta = torch.randn(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    old = torch.randn(2, 3) * 0.1 - 1.0
    adv = torch.tensor([1.0, -0.5])
    w = torch.tensor([[0.5, 2.0, 1.0], [1.5, 0.25, 0.0]])
    lp = torch.nn.functional.logsigmoid(theta)
    batch = PolicyBatch(logprobs=lp, old_logprobs=old, mask=mask, advantages=adv)
    loss, _ = policy_loss(batch, clip_low=10.0, clip_high=10.0, token_weights=w)  # clipping off: -A ratio
    (g,) = torch.autograd.grad(loss, theta)
    expected = torch.zeros_like(theta)
    for b in range(2):
        for t in range(3):
            if mask[b, t]:
                th = theta.detach().clone().requires_grad_(True)
                term = -adv[b] * torch.exp(torch.nn.functional.logsigmoid(th[b, t]) - old[b, t]) * w[b, t]
                expected += torch.autograd.grad(term, th)[0]
    torch.testing.assert_close(g, expected / 5)
    unweighted, _ = policy_loss(batch, clip_low=10.0, clip_high=10.0, token_weights=torch.ones(2, 3))
    plain, _ = policy_loss(batch, clip_low=10.0, clip_high=10.0)
    assert math.isclose(unweighted.item(), plain.item(), rel_tol=1e-6)
