"""f_divergence_sampled: unbiased for exactly what f_divergence computes, from reference or policy samples."""

import math

import pytest
import torch

from rlkit.functional import f_divergence, f_divergence_sampled, kl_penalty

NAMES = ["reverse_kl", "forward_kl", "js", "alpha", "tv", "chi2"]


def _setup(seed=0, v=7, n=300_000):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(v, generator=g, dtype=torch.float64)
    ref = torch.randn(v, generator=g, dtype=torch.float64)
    return g, logits, ref, n


@pytest.mark.parametrize("sampled_from", ["ref", "policy"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("control_variate", [True, False])
def test_monte_carlo_unbiased(name, sampled_from, control_variate):
    g, logits, ref, n = _setup(seed=hash((name, sampled_from)) % 1000)
    alpha = 0.3
    exact = f_divergence(logits, ref, name, alpha=alpha).item()
    lp_all, lq_all = torch.log_softmax(logits, -1), torch.log_softmax(ref, -1)
    source = lq_all if sampled_from == "ref" else lp_all
    x = torch.multinomial(source.exp(), n, replacement=True, generator=g)
    est = f_divergence_sampled(
        lp_all[x], lq_all[x], name, sampled_from=sampled_from, alpha=alpha, control_variate=control_variate
    )
    se = est.std().item() / math.sqrt(n)
    assert abs(est.mean().item() - exact) < 5 * se + 1e-9, (est.mean().item(), exact, se)


def test_wrong_direction_would_be_caught():
    """Sanity: the MC test above has the power to detect a direction swap (reverse vs forward KL)."""
    g, logits, ref, n = _setup(seed=3)
    lp_all, lq_all = torch.log_softmax(logits, -1), torch.log_softmax(ref, -1)
    x = torch.multinomial(lq_all.exp(), n, replacement=True, generator=g)
    est = f_divergence_sampled(lp_all[x], lq_all[x], "forward_kl", sampled_from="ref")
    wrong = f_divergence(logits, ref, "reverse_kl").item()
    se = est.std().item() / math.sqrt(n)
    assert abs(est.mean().item() - wrong) > 10 * se


@pytest.mark.parametrize("sampled_from", ["ref", "policy"])
@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl"])
def test_control_variate_lowers_variance(name, sampled_from):
    g, logits, ref, n = _setup(seed=5, n=50_000)
    lp_all, lq_all = torch.log_softmax(logits, -1), torch.log_softmax(ref, -1)
    source = lq_all if sampled_from == "ref" else lp_all
    x = torch.multinomial(source.exp(), n, replacement=True, generator=g)
    kw = dict(sampled_from=sampled_from)
    with_cv = f_divergence_sampled(lp_all[x], lq_all[x], name, control_variate=True, **kw)
    without = f_divergence_sampled(lp_all[x], lq_all[x], name, control_variate=False, **kw)
    assert with_cv.var() < without.var()
    assert torch.all(with_cv >= -1e-12)  # convexity: tangent-line forms are non-negative


def test_known_closed_forms():
    lp = torch.randn(20, dtype=torch.float64)
    lr = torch.randn(20, dtype=torch.float64)
    d = lp - lr
    u = d.exp()
    # reverse KL on policy samples == Schulman's k3 (unclamped)
    torch.testing.assert_close(
        f_divergence_sampled(lp, lr, "reverse_kl", "policy"), kl_penalty(lp, lr, "k3", value_clamp=None)
    )
    # forward KL on reference samples == DPH-RL's u - log u - 1
    torch.testing.assert_close(f_divergence_sampled(lp, lr, "forward_kl", "ref"), u - d - 1)
    # forward KL on policy samples == RAPO's rho log rho - rho + 1, rho = pi_ref/pi
    rho = (-d).exp()
    torch.testing.assert_close(f_divergence_sampled(lp, lr, "forward_kl", "policy"), rho * rho.log() - rho + 1)
    # JS on reference samples == 1/2 f_JS(u), f_JS(u) = u log u - (u + 1) log((u + 1)/2)
    torch.testing.assert_close(
        f_divergence_sampled(lp, lr, "js", "ref"), 0.5 * (u * u.log() - (u + 1) * torch.log((u + 1) / 2))
    )


def test_pathwise_gradient_exact_for_reference_samples():
    """E_{x~ref}[grad g(x)] = grad D(pi || ref) when samples come from the (fixed) reference: check by enumeration."""
    logits = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(6, dtype=torch.float64)
    lp, lq = torch.log_softmax(logits, -1), torch.log_softmax(ref, -1)
    for name in ("forward_kl", "js", "alpha", "reverse_kl"):
        expect = (lq.exp() * f_divergence_sampled(lp, lq, name, "ref", alpha=0.4)).sum()
        (g_est,) = torch.autograd.grad(expect, logits, retain_graph=True)
        (g_true,) = torch.autograd.grad(f_divergence(logits, ref, name, alpha=0.4), logits)
        torch.testing.assert_close(g_est, g_true)


def test_zero_when_equal_and_errors():
    lp = torch.randn(10)
    for name in NAMES:
        for src in ("ref", "policy"):
            assert torch.allclose(f_divergence_sampled(lp, lp.clone(), name, src), torch.zeros(10), atol=1e-6)
    with pytest.raises(ValueError, match="sampled_from"):
        f_divergence_sampled(lp, lp, "js", sampled_from="reference")
    with pytest.raises(ValueError, match="unknown divergence"):
        f_divergence_sampled(lp, lp, "jsd")
