"""f-DPO: reverse KL == standard DPO, TRL's parameterisation after alpha' = 1 - alpha, cDPO, IPO, hinge."""

import pytest
import torch
import torch.nn.functional as F

from rlkit.functional import dpo_loss, fdpo_loss


def _logps(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 20 + 1) for _ in range(4)]


def test_reverse_kl_is_standard_dpo():
    pc, pr, rc, rr = _logps()
    beta = 0.1
    want = -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, beta=beta), want)


def _trl_scores(divergence, logratio, trl_coef):
    """TRL 1.16's f'(t) written out from its documentation (independent of rlkit's code)."""
    t = logratio.exp()
    if divergence == "forward_kl":
        return 1 - 1 / t
    if divergence == "js_divergence":
        return torch.log(2 * t / (1 + t))
    if divergence == "alpha_divergence":
        return (t ** (trl_coef - 1) - 1) / (trl_coef - 1)
    return logratio


@pytest.mark.parametrize(
    "divergence,ours", [("forward_kl", "forward_kl"), ("js_divergence", "js"), ("alpha_divergence", "alpha")]
)
@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.7])
def test_agrees_with_trl_parameterisation(divergence, ours, alpha):
    pc, pr, rc, rr = [x / 10 for x in _logps(seed=1)]  # moderate log-ratios
    beta = 0.2
    trl_coef = 1 - alpha  # TRL's f_alpha_divergence_coef = 1 - alpha (paper)
    h = _trl_scores(divergence, pc - rc, trl_coef) - _trl_scores(divergence, pr - rr, trl_coef)
    want = -F.logsigmoid(beta * h)
    got = fdpo_loss(pc, pr, rc, rr, beta=beta, divergence=ours, alpha=alpha)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_alpha_parameterisation_is_not_trls_except_at_half():
    pc, pr, rc, rr = [x / 10 for x in _logps(seed=2)]
    alpha = 0.2
    h_trl_same_number = _trl_scores("alpha_divergence", pc - rc, alpha) - _trl_scores(
        "alpha_divergence", pr - rr, alpha
    )
    assert not torch.allclose(
        fdpo_loss(pc, pr, rc, rr, divergence="alpha", alpha=alpha).double(),
        -F.logsigmoid(0.1 * h_trl_same_number),
        rtol=1e-3,
    )


def test_alpha_limits_approach_reverse_and_forward():
    pc, pr, rc, rr = [x / 10 for x in _logps(seed=3)]
    rev = fdpo_loss(pc, pr, rc, rr, divergence="reverse_kl")
    fwd = fdpo_loss(pc, pr, rc, rr, divergence="forward_kl")
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, divergence="alpha", alpha=1e-5), rev, rtol=1e-3, atol=1e-5)
    # also in float32, where a dropped 1/alpha constant would cancel catastrophically
    f32 = [x.float() for x in (pc, pr, rc, rr)]
    torch.testing.assert_close(fdpo_loss(*f32, divergence="alpha", alpha=1e-5), rev.float(), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, divergence="alpha", alpha=1.0), fwd)
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, divergence="alpha", alpha=0.0), rev)


def test_label_smoothing_is_cdpo():
    pc, pr, rc, rr = _logps(seed=4)
    beta, eps = 0.1, 0.2
    z = beta * ((pc - rc) - (pr - rr))
    want = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps), want)


def test_ipo_and_hinge():
    pc, pr, rc, rr = _logps(seed=5)
    beta = 0.5
    h = (pc - rc) - (pr - rr)
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo"), (h - 1 / (2 * beta)) ** 2)
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge"), torch.relu(1 - beta * h))


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js", "alpha", "chi2"])
def test_gradient_pushes_chosen_up_and_rejected_down(divergence):
    pc, pr, rc, rr = [x / 10 for x in _logps(seed=6)]  # moderate log-ratios: no sigmoid saturation
    pc, pr = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
    loss = fdpo_loss(pc, pr, rc, rr, divergence=divergence).sum()
    gc, gr = torch.autograd.grad(loss, (pc, pr))
    assert torch.all(gc < 0) and torch.all(gr > 0)


def test_gradcheck():
    pc, pr, rc, rr = [x[:4] / 10 for x in _logps(seed=7)]
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    for div in ("reverse_kl", "forward_kl", "js", "alpha"):
        assert torch.autograd.gradcheck(lambda a, b: fdpo_loss(a, b, rc, rr, divergence=div, alpha=0.3), (pc, pr))


def test_dpo_loss_metrics():
    pc = torch.tensor([-1.0, -5.0])
    pr = torch.tensor([-3.0, -2.0])
    rc = torch.tensor([-2.0, -4.0])
    rr = torch.tensor([-2.0, -2.0])
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert m["rewards/chosen"] == pytest.approx(0.5 * (1 + -1) / 2)
    assert m["rewards/rejected"] == pytest.approx(0.5 * (-1 + 0) / 2)
    assert m["rewards/accuracy"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(
        float(-(F.logsigmoid(torch.tensor(1.0)) + F.logsigmoid(torch.tensor(-0.5))) / 2)
    )


def test_errors():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="tv"):
        fdpo_loss(x, x, x, x, divergence="tv")
    with pytest.raises(ValueError, match="loss_type"):
        fdpo_loss(x, x, x, x, loss_type="kto")
    with pytest.raises(ValueError, match="alpha"):
        fdpo_loss(x, x, x, x, divergence="alpha", alpha=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        fdpo_loss(x, x, x, x, label_smoothing=0.5)


def _ece_numpy(p, n_bins=10):
    import numpy as np

    p = np.asarray(p, dtype=np.float64)
    conf = np.maximum(p, 1 - p)
    correct = (p > 0.5).astype(np.float64)
    total = 0.0
    for b in range(n_bins):
        lo, hi = 0.5 + b * 0.5 / n_bins, 0.5 + (b + 1) * 0.5 / n_bins
        sel = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= hi))
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return total


def test_preference_ece_matches_a_direct_binned_computation_and_known_cases():
    from rlkit.functional import preference_ece

    gen = torch.Generator().manual_seed(0)
    p = torch.rand(500, generator=gen)
    assert preference_ece(p) == pytest.approx(_ece_numpy(p.numpy()), abs=1e-12)
    # always right at confidence 0.9: ECE = 0.1; right 90% of the time at 0.9: perfectly calibrated
    assert preference_ece(torch.full((10,), 0.9)) == pytest.approx(0.1)
    calibrated = torch.tensor([0.9] * 9 + [0.1])
    assert preference_ece(calibrated) == pytest.approx(0.0, abs=1e-6)  # 0.9 in float32
    assert preference_ece(torch.tensor([1.0, 0.0])) == pytest.approx(0.5)  # one sure hit, one sure miss


def test_dpo_loss_reports_ece_of_its_implicit_preference_model():
    from rlkit.functional import dpo_loss, preference_ece

    gen = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(64, generator=gen) for _ in range(4))
    _, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert m["rewards/ece"] == pytest.approx(preference_ece(torch.sigmoid(0.5 * ((pc - rc) - (pr - rr)))))
