"""f_divergence: textbook values, limits, masking, chunked == unchunked (values, grads), memory of the graph."""

import math

import numpy as np
import pytest
import torch

from rlkit.functional import f_divergence
from conftest import np_divergence, np_softmax

NAMES = ["reverse_kl", "forward_kl", "js", "alpha", "tv", "chi2"]


CASES = [(n, 0.5) for n in NAMES] + [("alpha", 0.3), ("alpha", 0.8), ("alpha", 2.0), ("alpha", -0.5)]


@pytest.mark.parametrize("name,alpha", CASES)
def test_matches_textbook_definition(name, alpha):
    logits = torch.randn(3, 4, 11, dtype=torch.float64) * 2
    ref = torch.randn(3, 4, 11, dtype=torch.float64) * 2
    got = f_divergence(logits, ref, name, alpha=alpha)
    want = np_divergence(np_softmax(logits.numpy()), np_softmax(ref.numpy()), name, alpha)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)


def test_directions_differ():
    """reverse and forward KL are different numbers on asymmetric distributions (no silent swap)."""
    logits, ref = torch.tensor([[3.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    p, q = np_softmax(logits.numpy()), np_softmax(ref.numpy())
    rev, fwd = f_divergence(logits, ref, "reverse_kl"), f_divergence(logits, ref, "forward_kl")
    assert rev.item() == pytest.approx((p * np.log(p / q)).sum(), rel=1e-5)
    assert fwd.item() == pytest.approx((q * np.log(q / p)).sum(), rel=1e-5)
    assert abs(rev.item() - fwd.item()) > 0.1


@pytest.mark.parametrize("name", NAMES)
def test_zero_at_equality_and_nonnegative(name):
    logits = torch.randn(5, 9)
    assert torch.allclose(f_divergence(logits, logits.clone() + 3.0, name), torch.zeros(5), atol=1e-5)
    assert torch.all(f_divergence(logits, torch.randn(5, 9), name) >= -1e-6)


def test_js_bounded_by_log2_and_reaches_it():
    big = torch.tensor([[60.0, 0.0], [0.0, 60.0]])
    js = f_divergence(big[:1], big[1:], "js")
    assert js.item() == pytest.approx(math.log(2), abs=1e-4)
    assert torch.all(f_divergence(torch.randn(50, 7) * 5, torch.randn(50, 7) * 5, "js") <= math.log(2) + 1e-6)


def test_alpha_limits():
    logits, ref = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    rev, fwd = f_divergence(logits, ref, "reverse_kl"), f_divergence(logits, ref, "forward_kl")
    torch.testing.assert_close(f_divergence(logits, ref, "alpha", alpha=1e-6), rev, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(f_divergence(logits, ref, "alpha", alpha=1 - 1e-6), fwd, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(f_divergence(logits, ref, "alpha", alpha=0.0), rev)
    torch.testing.assert_close(f_divergence(logits, ref, "alpha", alpha=1.0), fwd)


def test_mask_gives_zero_value_and_gradient():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    ref = torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    for chunk in (None, 2):
        out = f_divergence(logits, ref, "forward_kl", mask=mask, chunk_size=chunk)
        assert torch.all(out[~mask] == 0) and torch.all(out[mask] > 0)
        (g,) = torch.autograd.grad(out.sum(), logits)
        assert torch.all(g[~mask] == 0) and torch.any(g[mask] != 0)


@pytest.mark.parametrize("name", NAMES)
def test_chunked_equals_unchunked(name):
    logits = torch.randn(3, 7, 13, requires_grad=True)
    ref = torch.randn(3, 7, 13, requires_grad=True)
    w = torch.randn(3, 7)
    mask = torch.rand(3, 7) > 0.3
    full = f_divergence(logits, ref, name, mask=mask)
    g_full = torch.autograd.grad((full * w).sum(), (logits, ref))
    for chunk in (1, 4, 100):
        part = f_divergence(logits, ref, name, mask=mask, chunk_size=chunk)
        torch.testing.assert_close(part, full, rtol=0, atol=1e-6)
        g_part = torch.autograd.grad((part * w).sum(), (logits, ref))
        for a, b in zip(g_part, g_full):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl", "js", "alpha"])
def test_gradcheck_chunked(name):
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: f_divergence(a, b, name, alpha=0.3, chunk_size=2), (logits, ref))


def test_only_grad_for_inputs_that_need_it():
    logits = torch.randn(4, 6, requires_grad=True)
    ref = torch.randn(4, 6)  # frozen reference
    out = f_divergence(logits, ref, "js", chunk_size=3)
    out.sum().backward()
    assert logits.grad is not None and ref.grad is None


def _saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


def test_chunked_graph_keeps_no_extra_vocab_sized_tensors():
    """The chunked graph saves only its inputs (+ row index): no [N, V] intermediates, whatever N is."""
    n, v = 512, 1000
    logits = torch.randn(n, v, requires_grad=True)
    ref = torch.randn(n, v)
    inputs_bytes = 2 * n * v * 4
    chunked, _ = _saved_bytes(lambda: f_divergence(logits, ref, "js", chunk_size=64))
    naive, _ = _saved_bytes(lambda: f_divergence(logits, ref, "js"))
    assert chunked <= inputs_bytes + 8 * n + 1024
    assert naive >= 3 * inputs_bytes  # the unchunked graph keeps several [N, V] float32 intermediates


def test_low_precision_inputs_are_upcast_per_chunk():
    logits = torch.randn(4, 8, 50).to(torch.bfloat16)
    ref = torch.randn(4, 8, 50).to(torch.bfloat16)
    out = f_divergence(logits, ref, "forward_kl", chunk_size=5)
    assert out.dtype == torch.float32
    want = f_divergence(logits.float(), ref.float(), "forward_kl")
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        f_divergence(torch.zeros(2, 3), torch.zeros(2, 3), "kl")
    with pytest.raises(ValueError, match="differ in shape"):
        f_divergence(torch.zeros(2, 3), torch.zeros(2, 4), "js")
    with pytest.raises(ValueError, match="chunk_size"):
        f_divergence(torch.zeros(2, 3), torch.zeros(2, 3), "js", chunk_size=0)


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl", "js", "alpha"])
def test_fused_closed_form_gradient_matches_float64_autograd(name):
    """The fused path (frozen reference: gradient computed in closed form during the forward pass) against
    autograd through the textbook float64 formula on the same inputs."""
    logits = torch.randn(3, 7, 29) * 3
    ref = torch.randn(3, 7, 29) * 3
    w = torch.randn(3, 7)
    mask = torch.rand(3, 7) > 0.3
    x64 = logits.double().requires_grad_(True)
    full = f_divergence(x64, ref.double(), name, alpha=0.3, mask=mask)
    (g64,) = torch.autograd.grad((full * w.double()).sum(), x64)
    for chunk in (1, 5, 100):
        x = logits.clone().requires_grad_(True)
        part = f_divergence(x, ref, name, alpha=0.3, mask=mask, chunk_size=chunk)
        assert "Fused" in type(part.grad_fn.next_functions[0][0]).__name__  # under the reshape
        torch.testing.assert_close(part.double(), full.detach(), rtol=1e-5, atol=2e-6)  # float32 vs float64
        (g,) = torch.autograd.grad((part * w).sum(), x)
        torch.testing.assert_close(g.double(), g64, rtol=1e-5, atol=2e-6)
        assert g[~mask].abs().max() == 0


def test_fused_refuses_a_second_backward_and_can_be_turned_off():
    x = torch.randn(4, 9, requires_grad=True)
    ref = torch.randn(4, 9)
    out = f_divergence(x, ref, "forward_kl", chunk_size=2).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagate once"):
        out.backward()
    plain = f_divergence(x, ref, "forward_kl", chunk_size=2, fused=False).sum()
    plain.backward(retain_graph=True)
    plain.backward()  # the recomputing graph allows it


def test_fused_handles_minus_inf_logits_like_the_safe_formula():
    """A -inf logit (a token masked out) gives 0 log 0 terms: the fused pass must fall back, not return NaN."""
    logits = torch.randn(5, 11)
    ref = torch.randn(5, 11)
    ref[1, 3] = float("-inf")
    logits[2, 4] = float("-inf")
    for name in ("reverse_kl", "forward_kl", "js"):
        x = logits.clone().requires_grad_(True)
        y = logits.clone().requires_grad_(True)
        v_fused = f_divergence(x, ref, name, chunk_size=2)
        v_safe = f_divergence(y, ref, name, chunk_size=2, fused=False)
        # a KL is +inf where the other distribution has a hole; JS stays finite: same values either way
        assert not torch.isnan(v_fused).any()
        torch.testing.assert_close(v_fused, v_safe, equal_nan=True)
        ok = torch.isfinite(v_safe)
        (gx,) = torch.autograd.grad(v_fused[ok].sum(), x)
        (gy,) = torch.autograd.grad(v_safe[ok].sum(), y)
        # (at a -inf logit both paths give NaN gradients, as autograd through log_softmax does: same result)
        torch.testing.assert_close(gx, gy, rtol=1e-5, atol=1e-6, equal_nan=True)
