"""Advantages against explicit loops: GRPO (std and Dr. GRPO), RLOO, GAE."""

import numpy as np
import pytest
import torch

from rlkit.functional import gae_advantages, group_advantages, rloo_advantages, whiten


def test_group_advantages_against_numpy():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5], dtype=torch.float64)
    got = group_advantages(r, 4).numpy()
    for gi in range(2):
        g = r.numpy()[gi * 4 : (gi + 1) * 4]
        np.testing.assert_allclose(got[gi * 4 : (gi + 1) * 4], (g - g.mean()) / (g.std(ddof=1) + 1e-6), rtol=1e-6)
    dr = group_advantages(r, 4, scale_std=False).numpy()
    np.testing.assert_allclose(dr, r.numpy() - np.repeat(r.numpy().reshape(2, 4).mean(1), 4), rtol=1e-6)


def test_uniform_group_gives_zero_and_g1():
    assert torch.all(group_advantages(torch.ones(6), 3) == 0)
    assert torch.all(group_advantages(torch.tensor([3.0, 5.0]), 1) == 0)
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.ones(5), 2)


def test_rloo_leave_one_out():
    r = torch.tensor([1.0, 0.0, 2.0, 5.0, 4.0, 0.0])
    got = rloo_advantages(r, 3)
    for i in range(6):
        g = (i // 3) * 3
        others = [r[j].item() for j in range(g, g + 3) if j != i]
        assert got[i].item() == pytest.approx(r[i].item() - sum(others) / 2)
    with pytest.raises(ValueError):
        rloo_advantages(r, 1)


def _gae_loop(r, v, length, gamma, lam):
    deltas = [r[t] + gamma * (v[t + 1] if t + 1 < length else 0.0) - v[t] for t in range(length)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(length - t)) for t in range(length)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.95), (1.0, 0.0), (0.5, 0.3)])
def test_gae_against_explicit_sum(gamma, lam):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 6, generator=g, dtype=torch.float64)
    v = torch.randn(3, 6, generator=g, dtype=torch.float64)
    lengths = [6, 4, 1]
    mask = torch.zeros(3, 6)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    adv, ret = gae_advantages(r, v, mask, gamma, lam)
    for b, n in enumerate(lengths):
        want = _gae_loop(r[b].tolist(), v[b].tolist(), n, gamma, lam)
        np.testing.assert_allclose(adv[b, :n].numpy(), want, rtol=1e-5, atol=1e-6)
        assert torch.all(adv[b, n:] == 0) and torch.all(ret[b, n:] == 0)
        np.testing.assert_allclose(ret[b, :n].numpy(), np.array(want) + v[b, :n].numpy(), rtol=1e-5, atol=1e-6)


def test_gae_lambda_one_is_return_to_go_minus_value():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.2, 0.4, 0.6]])
    adv, ret = gae_advantages(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.8, 0.6, 0.4]]))


def test_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    w = whiten(x, m)
    assert w[0, 3] == 0
    assert w[0, :3].mean().abs() < 1e-6 and (w[0, :3].pow(2).mean() - 1).abs() < 1e-4
