"""rlkit.utils.optim: the fused AdamW is AdamW (against a hand-written update), falls back where fused cannot run,
and a resume keeps the live optimizer's implementation."""

import math

import pytest
import torch

from rlkit.utils.optim import adamw, fused_supported, load_state


def reference_adamw(p0, grads, lr, wd, betas=(0.9, 0.999), eps=1e-8):
    """AdamW (Loshchilov & Hutter), float64, written out: decoupled decay, bias-corrected moments."""
    p, m, v = p0.double().clone(), torch.zeros_like(p0, dtype=torch.float64), torch.zeros_like(p0, dtype=torch.float64)
    for t, g in enumerate(grads, 1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def run(opt_params, opt, grads):
    for g in grads:
        for p, gi in zip(opt_params, g):
            p.grad = gi.clone()
        opt.step()


def test_fused_on_cpu_and_equal_to_adamw():
    torch.manual_seed(0)
    p0 = torch.randn(3000)
    grads = [torch.randn(3000) * (1 + t) for t in range(15)]
    p = torch.nn.Parameter(p0.clone())
    opt = adamw([p], lr=1e-2, weight_decay=0.1)
    assert opt.param_groups[0]["fused"] is True
    run([p], opt, [[g] for g in grads])
    expected = reference_adamw(p0, grads, 1e-2, 0.1)
    assert torch.allclose(p.detach().double(), expected, atol=2e-6, rtol=0)
    assert (p.detach().double() - p0.double()).abs().max() > 0.05  # it moved: the check is not vacuous


def test_fused_matches_the_default_path():
    torch.manual_seed(1)
    shapes = [(64, 32), (32,), (7, 3, 5)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    oa = adamw(a, lr=3e-3, weight_decay=0.01)
    ob = torch.optim.AdamW(b, lr=3e-3, weight_decay=0.01)
    grads = [[torch.randn(s) for s in shapes] for _ in range(10)]
    run(a, oa, grads)
    run(b, ob, grads)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-6, rtol=0)


def test_bfloat16_parameters_take_the_fused_kernel():
    p = torch.nn.Parameter(torch.linspace(0.02, 0.04, 100).to(torch.bfloat16))  # bf16 spacing here ~1.2e-4
    opt = adamw([p], lr=1e-2, weight_decay=0.0)
    p.grad = torch.ones_like(p)
    before = p.detach().clone()
    opt.step()
    assert opt.param_groups[0]["fused"] is True
    # first Adam step: m_hat / sqrt(v_hat) = 1, so every entry moves by lr (bfloat16 rounding aside)
    assert torch.allclose((before - p.detach()).float(), torch.full((100,), 1e-2), atol=3e-4)


def test_unsupported_parameters_fall_back_without_error():
    meta = torch.nn.Parameter(torch.empty(4, device="meta"))
    assert not fused_supported([meta])
    assert not fused_supported([torch.nn.Parameter(torch.randn(3)), meta])
    assert fused_supported([torch.nn.Parameter(torch.randn(3))])
    opt = adamw([meta], lr=1e-3, weight_decay=0.0)
    assert not opt.param_groups[0]["fused"]
    with pytest.raises(ValueError, match="no parameters"):
        adamw([], lr=1e-3, weight_decay=0.0)


def test_resume_keeps_the_live_implementation_and_the_trajectory():
    """A state saved by the default path, loaded into a fused optimizer: it stays fused and continues exactly
    where an uninterrupted run goes."""
    torch.manual_seed(2)
    p0 = torch.randn(500)
    grads = [[torch.randn(500)] for _ in range(12)]
    saved = torch.nn.Parameter(p0.clone())
    o_saved = torch.optim.AdamW([saved], lr=1e-2, weight_decay=0.1)  # foreach path
    run([saved], o_saved, grads[:6])
    state = o_saved.state_dict()
    assert not state["param_groups"][0]["fused"]

    resumed = torch.nn.Parameter(saved.detach().clone())
    o_res = adamw([resumed], lr=1e-2, weight_decay=0.1)
    load_state(o_res, state)
    assert o_res.param_groups[0]["fused"] is True
    run([resumed], o_res, grads[6:])
    expected = reference_adamw(p0, [g[0] for g in grads], 1e-2, 0.1)
    assert torch.allclose(resumed.detach().double(), expected, atol=2e-6, rtol=0)
    assert math.isclose(float(o_res.state[resumed]["step"]), 12.0)
