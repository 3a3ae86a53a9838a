"""Exact divergences over the full vocabulary, computed from two logit tensors in chunks of positions."""

from __future__ import annotations

import math

import torch

from .generators import canonical


def _pmul(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``p * x`` with the convention ``0 * anything = 0`` (so zero-probability tokens never give NaN)."""
    return torch.where(p > 0, p * x, torch.zeros((), dtype=x.dtype, device=x.device))


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _rows(logits: torch.Tensor, ref_logits: torch.Tensor, divergence: str, alpha: float) -> torch.Tensor:
    """Divergence per row of ``[N, V]`` logits, in at least float32 (the chunk is the only upcast copy made)."""
    dtype = _compute_dtype(logits)
    lp = torch.log_softmax(logits.to(dtype), dim=-1)
    lq = torch.log_softmax(ref_logits.to(dtype), dim=-1)
    if divergence == "reverse_kl":
        return _pmul(lp.exp(), lp - lq).sum(-1)
    if divergence == "forward_kl":
        return _pmul(lq.exp(), lq - lp).sum(-1)
    if divergence == "js":
        lm = torch.logaddexp(lp, lq) - math.log(2.0)
        return 0.5 * (_pmul(lp.exp(), lp - lm).sum(-1) + _pmul(lq.exp(), lq - lm).sum(-1))
    if divergence == "alpha":
        a = alpha
        # D = (sum_v p^(1-a) q^a - 1) / (a (a - 1)), evaluated in log space
        return torch.expm1(torch.logsumexp((1.0 - a) * lp + a * lq, dim=-1)) / (a * (a - 1.0))
    if divergence == "tv":
        return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)
    if divergence == "chi2":
        return torch.expm1(torch.logsumexp(2.0 * lp - lq, dim=-1))
    raise ValueError(f"unknown divergence {divergence!r}")


#: divergences with a closed-form gradient in the policy logits (see :func:`_rows_and_grad`)
_ANALYTIC = ("reverse_kl", "forward_kl", "js", "alpha")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ``sum_v a_v b_v`` without a ``[N, V]`` temporary."""
    return torch.einsum("nv,nv->n", a, b)


def _fused_chunk(
    logits: torch.Tensor, ref_logits: torch.Tensor, divergence: str, alpha: float, grad: torch.Tensor
) -> torch.Tensor:
    """Divergence per row, writing its gradient in the policy logits ``z`` (``p = softmax(z)``) into ``grad``.

    For ``D(p)``, ``dD/dz = p * (h - <p, h>)`` with ``h = dD/dp``; constants in ``h`` cancel. Hence, with
    ``lp = log p``, ``lq = log q``, ``m = (p + q)/2``:

    * reverse KL: ``h = lp - lq`` so ``g = p (lp - lq - D)``;
    * forward KL: ``g = p - q`` (the cross-entropy gradient);
    * JS: ``h = (lp - lm)/2``;
    * alpha (``D = (S - 1)/(a(a-1))``, ``S = sum r``, ``r = p^(1-a) q^a``): ``g = (p S - r)/a``.

    ``grad`` (``[N, V]``, the compute dtype) doubles as the first work buffer, so a chunk costs two or three more
    ``[N, V]`` temporaries. Rows whose value is not finite (``-inf`` logits: ``0 * inf``) are redone by the
    ``0 log 0 = 0``-safe formula of :func:`_rows` with autograd.
    """
    dtype = _compute_dtype(logits)
    z, r = logits.to(dtype), ref_logits.to(dtype)
    lp = torch.sub(z, torch.logsumexp(z, -1, keepdim=True), out=grad)
    lq = r - torch.logsumexp(r, -1, keepdim=True)
    if divergence == "forward_kl":
        q = lq.exp()
        value = _dot(q, lq.sub_(lp))  # lq is not needed again
        grad.exp_().sub_(q)
    elif divergence == "reverse_kl":
        p = lp.exp()
        h = grad.sub_(lq)
        value = _dot(p, h)
        h.sub_(value.unsqueeze(-1)).mul_(p)
    elif divergence == "js":
        lm = torch.logaddexp(lp, lq).sub_(math.log(2.0))
        p, q = lp.exp(), lq.exp_()
        lq_minus_lm = torch.log(q).sub_(lm)
        h = grad.sub_(lm)  # lp - lm
        value = 0.5 * (_dot(p, h) + _dot(q, lq_minus_lm))
        h.mul_(0.5)
        h.sub_(_dot(p, h).unsqueeze(-1)).mul_(p)
    else:  # alpha
        rr = torch.exp((1.0 - alpha) * lp + alpha * lq)
        total = rr.sum(-1, keepdim=True)
        value = torch.expm1(torch.log(total.squeeze(-1))) / (alpha * (alpha - 1.0))
        grad.exp_().mul_(total).sub_(rr).div_(alpha)
    bad = ~torch.isfinite(value)
    if bad.any():
        rows = bad.nonzero().squeeze(-1)
        with torch.enable_grad():
            x = z.index_select(0, rows).detach().requires_grad_(True)
            v = _rows(x, r.index_select(0, rows), divergence, alpha)
            (g,) = torch.autograd.grad(v.sum(), x)
        value = value.index_copy(0, rows, v.detach())
        grad.index_copy_(0, rows, g)
    return value


class _FusedDivergence(torch.autograd.Function):
    """Value and policy-logit gradient in one chunked pass (forward), no recomputation in backward.

    Used when only the policy logits need a gradient and the divergence has a closed-form one: the forward pass
    writes each chunk's gradient straight into one ``[N, V]`` buffer (the size of the gradient any exact method
    returns) and the backward pass scales it in place by the incoming per-row gradient. Extra memory: that buffer
    plus ``O(chunk x V)``; compute: one pass instead of a forward and a recomputing backward. The buffer is scaled
    in place, so the graph can be backpropagated once (``retain_graph`` is refused).
    """

    @staticmethod
    def forward(ctx, logits, ref_logits, rows, divergence, alpha, chunk_size):  # noqa: D401
        out = torch.zeros(logits.shape[0], dtype=_compute_dtype(logits), device=logits.device)
        dtype = _compute_dtype(logits)
        grad = torch.zeros_like(logits)
        n = rows.numel()
        contiguous = n > 0 and int(rows[-1] - rows[0]) + 1 == n  # no mask: slices are views, nothing is copied
        buf = None
        with torch.no_grad():
            for s in range(0, n, chunk_size):
                idx = rows[s : s + chunk_size]
                if contiguous:
                    a, b = int(idx[0]), int(idx[-1]) + 1
                    zp, zq, dst = logits[a:b], ref_logits[a:b], grad[a:b]
                else:
                    zp, zq, dst = logits.index_select(0, idx), ref_logits.index_select(0, idx), None
                work = dst if dst is not None and dst.dtype == dtype else None
                if work is None:
                    if buf is None or buf.shape[0] < idx.numel():
                        buf = torch.empty(idx.numel(), logits.shape[1], dtype=dtype, device=logits.device)
                    work = buf[: idx.numel()]
                out[idx] = _fused_chunk(zp, zq, divergence, alpha, work)
                if dst is None:
                    grad.index_copy_(0, idx, work.to(grad.dtype))
                elif work is not dst:
                    dst.copy_(work)
        ctx.grad, ctx.used = grad, False
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.used:
            raise RuntimeError(
                "f_divergence's fused gradient was already consumed: backpropagate once, or pass "
                "fused=False to keep a recomputing graph"
            )
        ctx.used = True
        grad, ctx.grad = ctx.grad, None
        return grad.mul_(grad_out.to(grad.dtype).unsqueeze(-1)), None, None, None, None, None


class _ChunkedDivergence(torch.autograd.Function):
    """Forward: per-chunk values under no_grad. Backward: recompute each chunk and differentiate it alone.

    Nothing of size ``[N, V]`` is kept besides the inputs themselves and their gradients, so the extra memory is
    ``O(chunk x V)`` in both passes.
    """

    @staticmethod
    def forward(ctx, logits, ref_logits, rows, divergence, alpha, chunk_size):  # noqa: D401
        out = torch.zeros(logits.shape[0], dtype=_compute_dtype(logits), device=logits.device)
        with torch.no_grad():
            for s in range(0, rows.numel(), chunk_size):
                idx = rows[s : s + chunk_size]
                out[idx] = _rows(logits.index_select(0, idx), ref_logits.index_select(0, idx), divergence, alpha)
        ctx.save_for_backward(logits, ref_logits, rows)
        ctx.divergence, ctx.alpha, ctx.chunk_size = divergence, alpha, chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, ref_logits, rows = ctx.saved_tensors
        need_p, need_q = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_p = torch.zeros_like(logits) if need_p else None
        grad_q = torch.zeros_like(ref_logits) if need_q else None
        for s in range(0, rows.numel(), ctx.chunk_size):
            idx = rows[s : s + ctx.chunk_size]
            with torch.enable_grad():
                p = logits.index_select(0, idx).detach().requires_grad_(need_p)
                q = ref_logits.index_select(0, idx).detach().requires_grad_(need_q)
                value = _rows(p, q, ctx.divergence, ctx.alpha)
                inputs = [t for t, need in ((p, need_p), (q, need_q)) if need]
                grads = torch.autograd.grad(value, inputs, grad_out.index_select(0, idx))
            grads = list(grads)
            if need_p:
                grad_p.index_copy_(0, idx, grads.pop(0).to(grad_p.dtype))
            if need_q:
                grad_q.index_copy_(0, idx, grads.pop(0).to(grad_q.dtype))
        return grad_p, grad_q, None, None, None, None


def f_divergence(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    divergence: str,
    alpha: float = 0.5,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """Exact divergence over the vocabulary (last dim) at each position, ``pi = softmax(logits)``,
    ``pi_ref = softmax(ref_logits)``:

    * ``reverse_kl``: ``KL(pi || pi_ref) = sum_v pi_v log(pi_v / pi_ref_v)``
    * ``forward_kl``: ``KL(pi_ref || pi) = sum_v pi_ref_v log(pi_ref_v / pi_v)``
    * ``js``: ``1/2 KL(pi || M) + 1/2 KL(pi_ref || M)``, ``M = (pi + pi_ref)/2`` (in ``[0, log 2]``)
    * ``alpha``: ``D_{f_alpha}(pi || pi_ref) = (sum_v pi_v^(1-a) pi_ref_v^a - 1) / (a (a - 1))`` with the f-DPO
      paper's ``f_alpha`` (Wang et al. 2023, arXiv 2309.16240); ``a -> 0`` is reverse KL, ``a = 1`` forward KL
      (those end points are computed exactly as the KLs).
    * ``tv``: ``1/2 sum_v |pi_v - pi_ref_v|``; ``chi2``: ``sum_v (pi_v - pi_ref_v)^2 / pi_ref_v``.

    ``mask`` (broadcastable to ``logits.shape[:-1]``, bool or 0/1) selects positions; masked positions give 0 and no
    gradient (and with ``chunk_size`` they are not computed at all). ``chunk_size`` processes that many positions at
    a time with identical values and gradients: extra memory ``O(chunk_size x V)`` for the forward and the backward
    pass instead of ``O(positions x V)`` (upcasts of bf16/fp16 to float32 happen per chunk). Gradients flow to
    whichever of ``logits``/``ref_logits`` requires grad. With ``chunk_size``, when only ``logits`` needs a gradient
    and the divergence is reverse/forward KL, JS or alpha, ``fused`` (default) computes the gradient in closed form
    in the same pass as the value (no recomputation; the graph can then be backpropagated once). Returns float32
    (float64 for float64 inputs) of shape ``logits.shape[:-1]``.
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ in shape")
    name = canonical(divergence, alpha)
    lead = logits.shape[:-1]
    if mask is not None:
        mask = torch.broadcast_to(mask.to(torch.bool), lead)
    if chunk_size is None:
        value = _rows(logits, ref_logits, name, alpha)
        return value if mask is None else torch.where(mask, value, torch.zeros_like(value))
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size}")
    vocab = logits.shape[-1]
    flat_p, flat_q = logits.reshape(-1, vocab), ref_logits.reshape(-1, vocab)
    if mask is None:
        rows = torch.arange(flat_p.shape[0], device=logits.device)
    else:
        rows = mask.reshape(-1).nonzero().squeeze(-1)
    use_fused = (
        fused
        and name in _ANALYTIC
        and torch.is_grad_enabled()
        and logits.requires_grad
        and not ref_logits.requires_grad
    )
    fn = _FusedDivergence if use_fused else _ChunkedDivergence
    out = fn.apply(flat_p, flat_q, rows, name, alpha, int(chunk_size))
    return out.reshape(lead)
