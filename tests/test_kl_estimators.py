"""kl_penalty: formulas, clamps, straight-through gradients, Monte-Carlo unbiasedness of k1/k3."""

import math

import numpy as np
import pytest
import torch

from rlkit.functional import f_divergence, kl_penalty
from conftest import np_divergence, np_softmax


def test_formulas_against_numpy():
    lp = torch.randn(4, 7, dtype=torch.float64) - 2
    lr = torch.randn(4, 7, dtype=torch.float64) - 2
    d = (lp - lr).numpy()
    expected = {"k1": d, "k2": d**2 / 2, "k3": np.exp(-d) + d - 1, "abs": np.abs(d)}
    for name, ref in expected.items():
        got = kl_penalty(lp, lr, name, log_ratio_clamp=None, value_clamp=None)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_zero_when_equal():
    lp = torch.randn(3, 5)
    for est in ("k1", "k2", "k3", "abs", "k1+", "k3+"):
        assert torch.all(kl_penalty(lp, lp.clone(), est) == 0)


def test_k3_clamps():
    # k3 = exp(x) - x - 1 with x = log(pi_ref/pi) = lr - lp
    lp = torch.zeros(3, dtype=torch.float64)
    lr = torch.tensor([30.0, -30.0, 5.0], dtype=torch.float64)
    raw = kl_penalty(lp, lr, "k3", log_ratio_clamp=None, value_clamp=None)
    np.testing.assert_allclose(raw.numpy(), [math.exp(30) - 31, math.exp(-30) + 29, math.exp(5) - 6], rtol=1e-12)
    ratio_only = kl_penalty(lp, lr, "k3", log_ratio_clamp=20.0, value_clamp=None)
    np.testing.assert_allclose(ratio_only.numpy(), [math.exp(20) - 21, math.exp(-20) + 19, math.exp(5) - 6], rtol=1e-12)
    default = kl_penalty(lp, lr, "k3")  # both clamps: everything here exceeds 10
    np.testing.assert_allclose(default.numpy(), [10.0, 10.0, 10.0])
    small = kl_penalty(lp, torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64), "k3")
    np.testing.assert_allclose(small.numpy(), [math.exp(0.5) - 1.5, math.exp(-0.5) - 0.5, 0.0], rtol=1e-12)


@pytest.mark.parametrize("base", ["k1", "k3"])
def test_straight_through_value_and_gradient(base):
    lp = torch.randn(6, dtype=torch.float64, requires_grad=True)
    lr = torch.randn(6, dtype=torch.float64)
    st = kl_penalty(lp, lr, base + "+")
    torch.testing.assert_close(st.detach(), kl_penalty(lp, lr, base).detach())
    (g_st,) = torch.autograd.grad(st.sum(), lp)
    (g_k2,) = torch.autograd.grad(kl_penalty(lp, lr, "k2").sum(), lp)
    torch.testing.assert_close(g_st, g_k2)
    torch.testing.assert_close(g_k2, (lp - lr).detach())  # d/dlp of d^2/2


def test_k2_gradient_is_reverse_kl_gradient_on_policy():
    """E_{x~pi}[grad k2] = grad KL(pi||ref) (score-function identity), checked exactly by enumeration."""
    logits = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(6, dtype=torch.float64)
    lp = torch.log_softmax(logits, -1)
    lr = torch.log_softmax(ref, -1)
    p = lp.exp().detach()
    surrogate = (p * kl_penalty(lp, lr, "k2")).sum()  # expectation over x ~ pi with pi fixed (pathwise)
    (g_est,) = torch.autograd.grad(surrogate, logits)
    (g_true,) = torch.autograd.grad(f_divergence(logits, ref, "reverse_kl"), logits)
    torch.testing.assert_close(g_est, g_true)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_monte_carlo_unbiased(estimator):
    g = torch.Generator().manual_seed(1)
    logits, ref = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    p, q = np_softmax(logits.numpy()), np_softmax(ref.numpy())
    exact = np_divergence(p, q, "reverse_kl")
    n = 400_000
    x = torch.multinomial(torch.from_numpy(p), n, replacement=True, generator=g)
    lp, lr = torch.log(torch.from_numpy(p))[x], torch.log(torch.from_numpy(q))[x]
    est = kl_penalty(lp, lr, estimator, value_clamp=None)
    se = est.std().item() / math.sqrt(n)
    assert abs(est.mean().item() - exact) < 5 * se + 1e-9, (est.mean().item(), exact, se)
    if estimator == "k3":
        assert torch.all(est >= 0)


def test_k3_lower_variance_than_k1_near_reference():
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(10, generator=g, dtype=torch.float64)
    logits = ref + 0.1 * torch.randn(10, generator=g, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    x = torch.multinomial(p, 100_000, replacement=True, generator=g)
    lp, lr = torch.log_softmax(logits, -1)[x], torch.log_softmax(ref, -1)[x]
    assert kl_penalty(lp, lr, "k3").var() < 0.1 * kl_penalty(lp, lr, "k1").var()


def test_errors():
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")
    with pytest.raises(ValueError, match="differ in shape"):
        kl_penalty(torch.zeros(2), torch.zeros(3))
