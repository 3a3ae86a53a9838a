"""linear_f_divergence: divergences from hidden states + lm_head weight, never materialising [N, V] logits.

Checked against f_divergence on materialised logits, an independent float64 textbook formula (written here),
plain autograd through that formula, gradcheck, and the structure of what is saved and allocated."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LargestOutput as _LargestOutput

from rlkit.functional import f_divergence, linear_f_divergence

CASES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("js", 0.5), ("alpha", 0.3)]
B, T, H, V, H_REF = 2, 5, 8, 23, 6
TEMP = 0.7


def textbook(z, zq, name, alpha):
    """Float64 per-row divergence of softmax(z) from softmax(zq), straight from the definitions."""
    p, q = torch.softmax(z.double(), -1), torch.softmax(zq.double(), -1)
    if name == "reverse_kl":
        return (p * (p / q).log()).sum(-1)
    if name == "forward_kl":
        return (q * (q / p).log()).sum(-1)
    if name == "js":
        m = (p + q) / 2
        return 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    u = p / q  # sum_v q f_alpha(p / q), f_alpha(u) = (u^(1-a) - (1-a) u - a) / (a (a-1))
    return (q * (u ** (1 - alpha) - (1 - alpha) * u - alpha) / (alpha * (alpha - 1))).sum(-1)


def make(seed=0, bias=True, dtype=torch.float32, grad=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype) * 0.7
    b = torch.randn(V, generator=g, dtype=dtype) if bias else None
    ref_hidden = torch.randn(B, T, H_REF, generator=g, dtype=dtype)
    ref_weight = torch.randn(V, H_REF, generator=g, dtype=dtype) * 0.7
    ref_bias = torch.randn(V, generator=g, dtype=dtype) if bias else None
    for t in (hidden, weight, b):
        if t is not None and grad:
            t.requires_grad_(True)
    return hidden, weight, b, ref_hidden, ref_weight, ref_bias


def logits_of(h, w, b, temperature=TEMP):
    return F.linear(h, w, b) / temperature


MASKS = {
    "none": None,
    "contiguous": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool),  # one block across rows
    "scattered": torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.bool),
}


def call(form, h, w, b, rh, rw, rb, name, alpha, **kw):
    if form == "logits":
        return linear_f_divergence(h, w, logits_of(rh, rw, rb), name, alpha, bias=b, temperature=TEMP, **kw)
    return linear_f_divergence(
        h, w, None, name, alpha, ref_hidden=rh, ref_weight=rw, ref_bias=rb, bias=b, temperature=TEMP, **kw
    )


@pytest.mark.parametrize("name,alpha", CASES)
@pytest.mark.parametrize("form", ["logits", "hidden"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mask_kind", list(MASKS))
def test_values_match_f_divergence_and_textbook(name, alpha, form, bias, mask_kind):
    h, w, b, rh, rw, rb = make(bias=bias, grad=False)
    mask = MASKS[mask_kind]
    got = call(form, h, w, b, rh, rw, rb, name, alpha, mask=mask, chunk_size=3)
    assert got.shape == (B, T) and got.dtype == torch.float32
    z, zq = logits_of(h, w, b), logits_of(rh, rw, rb)
    want = f_divergence(z, zq, name, alpha=alpha, mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    book = textbook(z, zq, name, alpha)
    if mask is not None:
        book = book * mask
        assert torch.all(got[~mask] == 0)
    assert book.abs().max() > 1e-2  # a non-trivial case
    torch.testing.assert_close(got.double(), book, rtol=1e-5, atol=1e-6)


def test_temperature_is_applied_to_policy_and_hidden_reference_not_to_ref_logits():
    h, w, b, rh, rw, rb = make(grad=False)
    zq = F.linear(rh, rw, rb)  # given as ref_logits: used as-is
    got = linear_f_divergence(h, w, zq, "js", bias=b, temperature=2.5)
    torch.testing.assert_close(got.double(), textbook(F.linear(h, w, b) / 2.5, zq, "js", 0.5), rtol=1e-5, atol=1e-6)
    got = linear_f_divergence(h, w, None, "js", bias=b, temperature=2.5, ref_hidden=rh, ref_weight=rw, ref_bias=rb)
    torch.testing.assert_close(
        got.double(), textbook(F.linear(h, w, b) / 2.5, zq / 2.5, "js", 0.5), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name,alpha", CASES)
@pytest.mark.parametrize("chunk", [1, 3, 100])
@pytest.mark.parametrize("form", ["logits", "hidden"])
def test_gradients_match_autograd_through_textbook(name, alpha, chunk, form):
    h, w, b, rh, rw, rb = make(seed=1)
    mask = MASKS["scattered"] if chunk == 3 else None
    grad_out = torch.rand(B, T, generator=torch.Generator().manual_seed(5)) * 3 - 1  # non-uniform, mixed sign
    got = call(form, h, w, b, rh, rw, rb, name, alpha, mask=mask, chunk_size=chunk)
    g_got = torch.autograd.grad(got, (h, w, b), grad_out)
    h64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (h, w, b))
    ref = textbook(logits_of(h64, w64, b64), logits_of(rh.double(), rw.double(), rb.double()), name, alpha)
    if mask is not None:
        ref = ref * mask
    g_want = torch.autograd.grad(ref, (h64, w64, b64), grad_out.double())
    for a, e in zip(g_got, g_want):
        assert a.dtype == torch.float32 and e.abs().max() > 1e-3
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-5)
    if mask is not None:
        assert torch.all(g_got[0][~mask] == 0) and torch.any(g_got[0][mask] != 0)


def test_only_requested_gradients_and_frozen_weight():
    h, w, b, rh, rw, rb = make()
    w.requires_grad_(False)
    out = linear_f_divergence(h, w, None, "reverse_kl", ref_hidden=rh, ref_weight=rw, ref_bias=rb, bias=b)
    out.sum().backward()
    assert h.grad is not None and b.grad is not None and w.grad is None
    assert rh.grad is None and rw.grad is None


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "js", "alpha"])
def test_gradcheck_float64(name):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    ref = torch.randn(2, 3, 7, dtype=torch.float64, generator=g)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)

    def fn(h, w, b):
        return linear_f_divergence(h, w, ref, name, 0.3, bias=b, temperature=0.8, mask=mask, chunk_size=2)

    assert fn(h, w, b).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (h, w, b))


@pytest.mark.parametrize("name,alpha", CASES)
def test_zero_value_and_gradient_when_policy_is_the_reference(name, alpha):
    h, w, b, *_ = make(seed=2)
    out = linear_f_divergence(
        h,
        w,
        None,
        name,
        alpha,
        bias=b,
        ref_hidden=h.detach(),
        ref_weight=w.detach(),
        ref_bias=b.detach(),
        temperature=TEMP,
        chunk_size=4,
    )
    torch.testing.assert_close(out, torch.zeros(B, T), rtol=0, atol=3e-6)  # alpha: rounding / (a (a-1))
    for g in torch.autograd.grad(out, (h, w, b), torch.randn(B, T)):
        assert g.abs().max() < 1e-5


def test_bfloat16_matches_float32_loosely():
    h, w, b, rh, rw, rb = make(seed=4)
    lp = [t.detach().to(torch.bfloat16).requires_grad_(True) for t in (h, w, b)]
    ref = logits_of(rh, rw, rb).to(torch.bfloat16)
    out = linear_f_divergence(*lp[:2], ref, "forward_kl", bias=lp[2], temperature=TEMP, chunk_size=3)
    assert out.dtype == torch.float32
    grads = torch.autograd.grad(out.sum(), lp)
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3
    fp = [t.detach().float().requires_grad_(True) for t in lp]  # the same (rounded) inputs, in float32
    want = linear_f_divergence(*fp[:2], ref.float(), "forward_kl", bias=fp[2], temperature=TEMP, chunk_size=3)
    torch.testing.assert_close(out, want, rtol=5e-2, atol=5e-2)
    for g, e in zip(grads, torch.autograd.grad(want.sum(), fp)):
        assert (g.float() - e).norm() <= 2e-2 * e.norm()  # bf16 logits: about 3e-3 here


def test_minus_inf_bias_token_matches_f_divergence():
    h, w, b, rh, rw, rb = make(seed=6, grad=False)
    b[3] = float("-inf")  # a token the policy can never emit
    zq = logits_of(rh, rw, rb)
    for name in ("reverse_kl", "js", "forward_kl"):  # forward KL is +inf there, like f_divergence says
        got = linear_f_divergence(h, w, zq, name, bias=b, temperature=TEMP, chunk_size=3)
        torch.testing.assert_close(got, f_divergence(logits_of(h, w, b), zq, name), equal_nan=True)
        assert not torch.isnan(got).any()


def test_errors():
    h, w, b, rh, rw, rb = make(grad=False)
    ref = logits_of(rh, rw, rb)
    with pytest.raises(ValueError, match="exactly one"):
        linear_f_divergence(h, w, ref, "js", ref_hidden=rh, ref_weight=rw)
    with pytest.raises(ValueError, match="exactly one"):
        linear_f_divergence(h, w, None, "js")
    with pytest.raises(ValueError, match="needs ref_weight"):
        linear_f_divergence(h, w, None, "js", ref_hidden=rh)
    with pytest.raises(ValueError, match="go with ref_hidden"):
        linear_f_divergence(h, w, ref, "js", ref_weight=rw)
    for kw in (
        {"ref_hidden": rh.clone().requires_grad_(True), "ref_weight": rw},
        {"ref_hidden": rh, "ref_weight": rw.clone().requires_grad_(True)},
        {"ref_hidden": rh, "ref_weight": rw, "ref_bias": rb.clone().requires_grad_(True)},
    ):
        with pytest.raises(ValueError, match="requires grad"):
            linear_f_divergence(h, w, None, "js", **kw)
    with pytest.raises(ValueError, match="ref_logits requires grad"):
        linear_f_divergence(h, w, ref.clone().requires_grad_(True), "js")
    for bad in ("tv", "chi2", "kl"):
        with pytest.raises(ValueError, match="supports reverse_kl, forward_kl, js, alpha"):
            linear_f_divergence(h, w, ref, bad)
    with pytest.raises(ValueError, match="do not match"):
        linear_f_divergence(h, torch.zeros(V, H + 1), ref, "js")
    with pytest.raises(ValueError, match=r"ref_logits has shape \(2, 5, 22\)"):
        linear_f_divergence(h, w, ref[..., :-1], "js")
    with pytest.raises(ValueError, match="ref_weight has shape"):
        linear_f_divergence(h, w, None, "js", ref_hidden=rh, ref_weight=rw[:-1])
    with pytest.raises(ValueError, match="ref_hidden has shape"):
        linear_f_divergence(h, w, None, "js", ref_hidden=rh[:1], ref_weight=rw)
    with pytest.raises(ValueError, match="bias has shape"):
        linear_f_divergence(h, w, ref, "js", bias=torch.zeros(V + 1))
    with pytest.raises(ValueError, match="chunk_size"):
        linear_f_divergence(h, w, ref, "js", chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        linear_f_divergence(h, w, ref, "js", temperature=0.0)
    with pytest.raises(ValueError, match="alpha must be finite"):
        linear_f_divergence(h, w, ref, "alpha", alpha=math.nan)


# ----------------------------------------------------------------------------------------------- memory structure
N_ROWS, BIG_V, SMALL_H, CHUNK = 64, 512, 16, 4  # N x V = 32768 >> chunk x V = 2048, V x H = 8192, N x H = 1024


def _big(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N_ROWS, SMALL_H, generator=g, requires_grad=True)
    w = torch.randn(BIG_V, SMALL_H, generator=g, requires_grad=True)
    b = torch.randn(BIG_V, generator=g, requires_grad=True)
    rh, rw = torch.randn(N_ROWS, SMALL_H, generator=g), torch.randn(BIG_V, SMALL_H, generator=g)
    return h, w, b, rh, rw


@pytest.mark.parametrize("form", ["logits", "hidden"])
def test_no_vocab_sized_tensor_is_allocated_forward_or_backward(form):
    h, w, b, rh, rw = _big()
    ref = F.linear(rh, rw)
    nv = N_ROWS * BIG_V
    kw = {"ref_hidden": rh, "ref_weight": rw} if form == "hidden" else {}
    mode = _LargestOutput([h, w, b, rh, rw, ref])
    with mode:
        out = linear_f_divergence(h, w, ref if form == "logits" else None, "js", bias=b, chunk_size=CHUNK, **kw)
        out.backward(torch.rand(N_ROWS))
    assert "aten.addmm_.default" in mode.ops  # the backward pass (grad of weight) ran under the mode too
    assert CHUNK * BIG_V <= mode.largest < nv
    # positive control: the same detector sees the naive version's [N, V] tensors
    naive = _LargestOutput([h, w, b, rh, rw, ref])
    with naive:
        f_divergence(F.linear(h, w, b), ref, "js").backward(torch.rand(N_ROWS))
    assert naive.largest >= nv


@pytest.mark.parametrize("masked", [False, True])
def test_strided_ref_logits_and_hidden_are_gathered_per_chunk(masked):
    """Shifted views (``x[:, :-1]``) cannot be flattened without a copy: the [B, T, V] reference is read chunk by
    chunk instead, with the same values and gradients as on materialised logits."""
    g = torch.Generator().manual_seed(7)
    b_, t_ = 4, N_ROWS // 4
    hidden_full = torch.randn(b_, t_ + 1, SMALL_H, generator=g, requires_grad=True)
    w = torch.randn(BIG_V, SMALL_H, generator=g, requires_grad=True)
    ref_full = torch.randn(b_, t_ + 1, BIG_V, generator=g)
    h, ref = hidden_full[:, 1:], ref_full[:, :-1]
    mask = torch.rand(b_, t_, generator=g) > 0.3 if masked else None
    grad_out = torch.rand(b_, t_, generator=g)
    mode = _LargestOutput([hidden_full, w, ref_full])
    with mode:
        got = linear_f_divergence(h, w, ref, "js", mask=mask, chunk_size=CHUNK)
        g_got = torch.autograd.grad(got, (hidden_full, w), grad_out)
    assert mode.largest < N_ROWS * BIG_V
    want = f_divergence(F.linear(h, w), ref, "js", mask=mask)
    g_want = torch.autograd.grad(want, (hidden_full, w), grad_out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, e in zip(g_got, g_want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


def test_masked_rows_are_not_computed():
    h, w, b, rh, rw = _big()
    mask = torch.zeros(N_ROWS, dtype=torch.bool)
    mask[[3, 40]] = True
    mode = _LargestOutput([h, w, b, rh, rw])
    with mode:
        out = linear_f_divergence(
            h, w, None, "forward_kl", bias=b, ref_hidden=rh, ref_weight=rw, mask=mask, chunk_size=256
        )
        out.sum().backward()
    assert mode.largest <= BIG_V * SMALL_H  # only 2 rows' logits ([2, V]); the largest output is grad of weight
    assert torch.all(out[~mask] == 0) and torch.all(h.grad[~mask] == 0)


def test_graph_saves_only_the_inputs():
    h, w, b, rh, rw = _big()
    ref = F.linear(rh, rw)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear_f_divergence(h, w, None, "reverse_kl", bias=b, ref_hidden=rh, ref_weight=rw, chunk_size=CHUNK)
    assert saved and max(t.numel() for t in saved) < N_ROWS * BIG_V
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear_f_divergence(h, w, ref, "reverse_kl", bias=b, chunk_size=CHUNK)
    big = [t for t in saved if t.numel() >= N_ROWS * BIG_V]
    assert all(t.untyped_storage().data_ptr() == ref.untyped_storage().data_ptr() for t in big)  # the input only
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # positive control: naive saves [N, V]s
        f_divergence(F.linear(h, w, b), ref, "reverse_kl")
    assert sum(t.numel() >= N_ROWS * BIG_V for t in saved) >= 2


# ------------------------------------------------------------------------------------------------ reduction="sum"
@pytest.mark.parametrize("name,alpha", CASES)
@pytest.mark.parametrize("form", ["logits", "hidden"])
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_weighted_sum_value_and_gradients_match_autograd_through_textbook(name, alpha, form, chunk):
    h, w, b, rh, rw, rb = make(seed=2)
    mask = MASKS["scattered"] if chunk == 3 else None
    weights = torch.rand(B, T, generator=torch.Generator().manual_seed(7)) * 2 - 0.5  # per position, mixed sign
    got = call(form, h, w, b, rh, rw, rb, name, alpha, mask=mask, chunk_size=chunk, reduction="sum", weights=weights)
    assert got.shape == ()
    (got * 1.7).backward()  # a non-unit incoming gradient
    h64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (h, w, b))
    per_pos = textbook(logits_of(h64, w64, b64), logits_of(rh.double(), rw.double(), rb.double()), name, alpha)
    want = (per_pos * weights.double() * (mask if mask is not None else 1)).sum()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    g_want = torch.autograd.grad(want * 1.7, (h64, w64, b64))
    for t, e in zip((h, w, b), g_want):
        assert e.abs().max() > 1e-3
        torch.testing.assert_close(t.grad.double(), e, rtol=1e-4, atol=1e-5)


def test_weighted_sum_equals_the_per_position_path():
    h, w, b, rh, rw, rb = make(seed=3)
    per = linear_f_divergence(h, w, None, "js", ref_hidden=rh, ref_weight=rw, bias=b, chunk_size=4)
    g_per = torch.autograd.grad(per.sum(), (h, w, b))
    tot = linear_f_divergence(h, w, None, "js", ref_hidden=rh, ref_weight=rw, bias=b, chunk_size=4, reduction="sum")
    g_tot = torch.autograd.grad(tot, (h, w, b))
    torch.testing.assert_close(tot, per.sum())
    for a, e in zip(g_tot, g_per):
        torch.testing.assert_close(a, e)
    with torch.no_grad():  # no gradient wanted: values only
        assert torch.allclose(
            linear_f_divergence(h, w, None, "js", ref_hidden=rh, ref_weight=rw, bias=b, reduction="sum"), per.sum()
        )


def test_weighted_sum_gradcheck_and_single_backward():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(5, 7, generator=g, dtype=torch.float64)
    wts = torch.rand(5, generator=g, dtype=torch.float64)
    f = lambda a, c: linear_f_divergence(a, c, ref, "reverse_kl", chunk_size=2, reduction="sum", weights=wts)  # noqa: E731
    f(h, w).backward()  # analytic, against central differences (gradcheck would backpropagate one graph twice)
    for t, other in ((h, w), (w, h)):
        fd = torch.zeros_like(t)
        for i in range(t.numel()):
            d = torch.zeros_like(t).view(-1)
            d[i] = 1e-6
            d = d.view_as(t)
            with torch.no_grad():
                up = f(t + d, other) if t is h else f(other, t + d)
                down = f(t - d, other) if t is h else f(other, t - d)
            fd.view(-1)[i] = (up - down) / 2e-6
        torch.testing.assert_close(t.grad, fd, rtol=1e-6, atol=1e-8)
    out = linear_f_divergence(h, w, ref, "forward_kl", reduction="sum")
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        out.backward()
    with pytest.raises(ValueError, match="reduction"):
        linear_f_divergence(h, w, ref, "js", reduction="mean")
    with pytest.raises(ValueError, match="weights go with"):
        linear_f_divergence(h, w, ref, "js", weights=wts)


def test_weighted_sum_allocates_nothing_vocab_sized():
    h, w, b, rh, rw = _big()
    mode = _LargestOutput([h, w, b, rh, rw])
    with mode:
        linear_f_divergence(
            h, w, None, "forward_kl", ref_hidden=rh, ref_weight=rw, bias=b, chunk_size=CHUNK, reduction="sum"
        ).backward()
    assert CHUNK * BIG_V <= mode.largest < N_ROWS * BIG_V
