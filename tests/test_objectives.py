"""Objectives: clipped surrogate, aggregation modes, GRPO with regularizers, Lp-Reg override, PPO pieces."""

import pytest
import torch

from rlkit.functional import aggregate, clipped_surrogate, kl_penalty, token_level_rewards, value_loss
from rlkit.objectives import grpo_loss, ppo_loss, reward_penalty
from rlkit.regularizers import PolicyBatch, build_regularizers


def test_clipped_surrogate_by_hand():
    old = torch.zeros(1, 4)
    lp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    loss, stats = clipped_surrogate(lp, old, adv, torch.ones(1, 4), clip_low=0.2, clip_high=0.28)
    # ratio 1.5, A>0 -> clipped at 1.28; ratio 0.5, A<0 -> clipped at 0.8 (loss 0.8); 1.1 inside; 0.7 A>0 unclipped
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.28, 0.8, -1.1, -0.7]]))
    assert stats["clipped"].tolist() == [[True, True, False, False]]
    (g,) = torch.autograd.grad(loss.sum(), lp)
    assert g[0, 0] == 0 and g[0, 1] == 0 and g[0, 2] != 0 and g[0, 3] != 0


def test_dual_clip():
    lp = torch.log(torch.tensor([[5.0]]))
    loss, _ = clipped_surrogate(lp, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1), dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)


def test_aggregation_modes():
    v = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert aggregate(v, m, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(v, m, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(v, m, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(v, m, "drgrpo", norm_length=10).item() == pytest.approx(10 / 20)
    with pytest.raises(ValueError, match="norm_length"):  # no silent fallback to the padded length
        aggregate(v, m, "drgrpo")
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(v, m, "mean")


def _batch(b=4, t=5, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(b, t, generator=g) * 3).requires_grad_(True)
    old = lp.detach() + 0.05 * torch.randn(b, t, generator=g)
    ref = lp.detach() + 0.3 * torch.randn(b, t, generator=g)
    mask = torch.ones(b, t)
    mask[0, 3:] = 0
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:b]
    return PolicyBatch(logprobs=lp, old_logprobs=old, ref_logprobs=ref, mask=mask, advantages=adv, **kw)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "drgrpo"])
def test_grpo_loss_is_surrogate_plus_beta_kl(aggregation):
    batch = _batch()
    regs = build_regularizers([{"name": "kl", "estimator": "k3", "coef": 0.04}])
    L = 8 if aggregation == "drgrpo" else None  # Dr. GRPO's constant length
    loss, metrics = grpo_loss(batch, regs, aggregation=aggregation, norm_length=L)
    pg, _ = clipped_surrogate(batch.logprobs, batch.old_logprobs, batch.advantages, batch.mask)
    kl = kl_penalty(batch.logprobs, batch.ref_logprobs, "k3")
    want = aggregate(pg, batch.mask, aggregation, L) + 0.04 * aggregate(kl, batch.mask, aggregation, L)
    torch.testing.assert_close(loss, want)
    assert metrics["kl_k3/value"] == pytest.approx(aggregate(kl, batch.mask, "token-mean").item(), rel=1e-5)
    assert metrics["kl_k3/coef"] == pytest.approx(0.04)
    assert 0 <= metrics["policy/clip_frac"] <= 1


def test_reward_placed_regularizers_are_not_in_the_loss():
    batch = _batch()
    base, _ = grpo_loss(batch, [])
    with_reward_kl, _ = grpo_loss(batch, build_regularizers("kl_reward"))
    torch.testing.assert_close(base, with_reward_kl)


def test_reward_penalty_and_token_rewards():
    batch = _batch()
    regs = build_regularizers([{"name": "kl", "estimator": "k1", "placement": "reward", "coef": 0.1}, "kl_k3"])
    pen, metrics = reward_penalty(batch, regs)
    want = 0.1 * (batch.logprobs.detach() - batch.ref_logprobs) * batch.mask
    torch.testing.assert_close(pen, want)
    assert not pen.requires_grad and "kl_k3/value" not in metrics
    rewards = token_level_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), batch.mask, pen)
    assert rewards[0, 2].item() == pytest.approx(1.0 - pen[0, 2].item())  # score on the last valid token
    assert rewards[0, 3].item() == 0.0 and rewards[1, 4].item() == pytest.approx(2.0 - pen[1, 4].item())


def test_lp_reg_overrides_surrogate_on_selected_tokens_only():
    b, t = 4, 50
    g = torch.Generator().manual_seed(1)
    lp = (-torch.rand(b, t, generator=g) * 6).requires_grad_(True)
    proxy = lp.detach() + 0.5  # proxy above the policy everywhere -> eligible where selected
    batch = PolicyBatch(
        logprobs=lp,
        old_logprobs=lp.detach() - 0.5,
        mask=torch.ones(b, t),
        advantages=torch.tensor([-1.0, -1.0, 1.0, 1.0]),
        proxy_logprobs=proxy,
    )
    (reg,) = build_regularizers([{"name": "lp_reg", "rho": 0.1}])
    sel = reg.selected(batch)
    assert sel.sum().item() == 10  # 10% of the 100 negative-advantage tokens
    assert not sel[2:].any()  # positive advantages are never selected (rho_positive = 0)
    chosen_vals = lp.detach()[sel]
    others = lp.detach()[:2][~sel[:2]]
    assert chosen_vals.max() <= others.min()  # the lowest-probability ones
    loss, metrics = grpo_loss(batch, [reg], aggregation="token-mean")
    pg, stats = clipped_surrogate(lp, batch.old_logprobs, batch.advantages, batch.mask)
    replaced = torch.where(sel, stats["unclipped"], pg)
    pen = torch.where(sel, kl_penalty(lp, proxy, "k3"), torch.zeros_like(pg))
    want = aggregate(replaced, batch.mask) + 1.0 * aggregate(pen, batch.mask)
    torch.testing.assert_close(loss, want)
    assert metrics["lp_reg/selected_frac"] == pytest.approx(10 / 200)
    # ratio exp(0.5) > 1 + clip for negative advantage: the clipped surrogate would have zero gradient there
    (grad,) = torch.autograd.grad(loss, lp)
    assert torch.all(grad[sel] != 0)


def test_lp_reg_needs_proxy_above_policy():
    lp = -torch.rand(2, 10) * 3
    batch = PolicyBatch(
        logprobs=lp,
        old_logprobs=lp,
        mask=torch.ones(2, 10),
        advantages=torch.tensor([-1.0, -1.0]),
        proxy_logprobs=lp - 1.0,
    )  # proxy below policy: filtered/penalised tokens excluded
    (reg,) = build_regularizers([{"name": "lp_reg", "rho": 0.5}])
    assert not reg.selected(batch).any()


def test_dads_weights_scale_the_kl_per_sample():
    batch = _batch(accuracy=torch.tensor([0.25, 0.25, 0.5, 0.5]))
    (plain,) = build_regularizers([{"name": "kl", "coef": 1.0}])
    (dads,) = build_regularizers([{"name": "kl", "coef": 1.0, "weighting": {"type": "dads", "eta": 2.0}}])
    a, b = plain(batch).per_token, dads(batch).per_token
    import math

    torch.testing.assert_close(b[0], a[0] * (1 - math.exp(-0.5)))  # positive advantage, acc 0.25
    torch.testing.assert_close(b[1], a[1])  # negative advantage
    torch.testing.assert_close(b[2], a[2] * (1 - math.exp(-1.0)))


def test_ppo_loss_and_value_loss():
    batch = _batch()
    batch.advantages = torch.randn(4, 5)
    values = torch.randn(4, 5, requires_grad=True)
    old_values = values.detach() + 0.5
    returns = torch.randn(4, 5)
    loss, metrics = ppo_loss(batch, values, old_values, returns, build_regularizers("kl_k3"), vf_coef=0.5)
    pol, _ = grpo_loss(batch, build_regularizers("kl_k3"))
    vl = value_loss(values, old_values, returns, batch.mask, clip=0.2)
    torch.testing.assert_close(loss, pol + 0.5 * vl)
    err = torch.maximum((values - returns) ** 2, (old_values + (values - old_values).clamp(-0.2, 0.2) - returns) ** 2)
    torch.testing.assert_close(vl, 0.5 * aggregate(err, batch.mask))
    assert metrics["loss/value"] == pytest.approx(vl.item())


def test_policy_loss_requires_old_logprobs():
    with pytest.raises(ValueError, match="old_logprobs"):
        grpo_loss(PolicyBatch(logprobs=torch.zeros(1, 2), mask=torch.ones(1, 2)))
