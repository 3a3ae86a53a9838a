"""Exact full-vocabulary divergences from hidden states and the lm_head weight, never holding ``[N, V]`` logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .exact import _ANALYTIC, _compute_dtype, _fused_chunk
from .generators import canonical


def _chunks(rows: torch.Tensor, chunk_size: int):
    """``(slice, None)`` per chunk when ``rows`` is a contiguous range (views, no copies), else ``(None, index)``."""
    n = rows.numel()
    start = int(rows[0]) if n else 0
    contiguous = n > 0 and int(rows[-1]) - start + 1 == n
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        yield (slice(start + s, start + e), None) if contiguous else (None, rows[s:e])


def _take(t: torch.Tensor, sl, idx) -> torch.Tensor:
    """Rows ``sl``/``idx`` of ``t`` (``[rows]``, ``[rows, D]``), or of a ``[..., D]`` that cannot be viewed as one."""
    if t.dim() <= 2:
        return t[sl] if sl is not None else t.index_select(0, idx)
    if sl is not None:
        idx = torch.arange(sl.start, sl.stop, device=t.device)
    return t[torch.unravel_index(idx, t.shape[:-1])]


def _put(dst: torch.Tensor, sl, idx, src: torch.Tensor) -> None:
    if sl is not None:
        dst[sl] = src
    else:
        dst.index_copy_(0, idx, src.to(dst.dtype))


def _logits(h, w, b, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """``(h @ w.T + b) / temperature`` for one chunk: the matmul runs in the inputs' dtype, the result is ``dtype``."""
    z = F.linear(h, w, b).to(dtype)
    return z.div_(temperature) if temperature != 1.0 else z


def _pair(saved, sl, idx, temperature, dtype):
    """Policy and reference logits of one chunk (the reference is either logits, or hidden + weight + bias)."""
    hidden, weight, bias, ref, ref_weight, ref_bias = saved
    z = _logits(_take(hidden, sl, idx), weight, bias, temperature, dtype)
    if ref_weight is None:
        return z, _take(ref, sl, idx)  # used as-is; _fused_chunk upcasts it and never writes into it
    return z, _logits(_take(ref, sl, idx), ref_weight, ref_bias, temperature, dtype)


def _work(buf, z):
    """A reusable ``[chunk, V]`` buffer in the compute dtype (grown when a chunk is larger)."""
    if buf is None or buf.shape[0] < z.shape[0]:
        buf = torch.empty_like(z)
    return buf, buf[: z.shape[0]]


class _LinearDivergence(torch.autograd.Function):
    """Forward: values chunk by chunk (no graph, only the inputs saved). Backward: recompute each chunk's logits,
    take the closed-form logits gradient of :func:`_fused_chunk`, and push it through the linear layer."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ref, ref_weight, ref_bias, rows, divergence, alpha, temperature, chunk):
        dtype = _compute_dtype(hidden)
        saved = (hidden, weight, bias, ref, ref_weight, ref_bias)
        out = torch.zeros(hidden.shape[0], dtype=dtype, device=hidden.device)
        buf = None
        for sl, idx in _chunks(rows, chunk):
            z, zq = _pair(saved, sl, idx, temperature, dtype)
            buf, work = _work(buf, z)
            _put(out, sl, idx, _fused_chunk(z, zq, divergence, alpha, work))
        ctx.save_for_backward(*saved, rows)
        ctx.cfg = (divergence, alpha, temperature, chunk)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        *saved, rows = ctx.saved_tensors
        hidden, weight, bias = saved[:3]
        divergence, alpha, temperature, chunk = ctx.cfg
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = _compute_dtype(hidden)
        gh = torch.zeros_like(hidden) if need_h else None
        gw = torch.zeros_like(weight) if need_w else None
        gb = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if need_b else None
        scale = grad_out.to(dtype) / temperature  # dD/dh = (dD/dz / T) @ W, with z the tempered logits
        buf = None
        for sl, idx in _chunks(rows, chunk):
            z, zq = _pair(saved, sl, idx, temperature, dtype)
            buf, g = _work(buf, z)
            _fused_chunk(z, zq, divergence, alpha, g)
            del z, zq
            g.mul_(_take(scale, sl, idx).unsqueeze(-1))
            if need_b:
                gb.add_(g.sum(0))
            g_in = g.to(weight.dtype)  # the two matmuls run in the inputs' dtype, as the forward one does
            if need_h and sl is not None:
                torch.mm(g_in, weight, out=gh[sl])  # a contiguous block of rows: written in place
            elif need_h:
                gh.index_copy_(0, idx, g_in @ weight)
            if need_w:
                gw.addmm_(g_in.t(), _take(hidden, sl, idx))
        gb = gb.to(bias.dtype) if need_b else None
        return gh, gw, gb, None, None, None, None, None, None, None, None


class _LinearDivergenceSum(torch.autograd.Function):
    """``sum_r w_r D_r`` with its gradients computed in the forward pass, chunk by chunk: one logits matmul and the
    two gradient matmuls per chunk, the three of plain autograd, no recomputation. Backward scales the accumulated
    gradients by the incoming scalar (in place: backpropagate once)."""

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, ref, ref_weight, ref_bias, rows, row_w, divergence, alpha, temperature, chunk
    ):
        dtype = _compute_dtype(hidden)
        saved = (hidden, weight, bias, ref, ref_weight, ref_bias)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh = torch.zeros_like(hidden) if need_h else None
        gw = torch.zeros_like(weight) if need_w else None
        gb = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if need_b else None
        total = torch.zeros((), dtype=dtype, device=hidden.device)
        buf = None
        for sl, idx in _chunks(rows, chunk):
            z, zq = _pair(saved, sl, idx, temperature, dtype)
            buf, g = _work(buf, z)
            w_c = _take(row_w, sl, idx).to(dtype)
            total += torch.dot(_fused_chunk(z, zq, divergence, alpha, g), w_c)
            del z, zq
            if not (need_h or need_w or need_b):
                continue
            g.mul_((w_c / temperature).unsqueeze(-1))
            if need_b:
                gb.add_(g.sum(0))
            g_in = g.to(weight.dtype)
            if need_h and sl is not None:
                torch.mm(g_in, weight, out=gh[sl])
            elif need_h:
                gh.index_copy_(0, idx, g_in @ weight)
            if need_w:
                gw.addmm_(g_in.t(), _take(hidden, sl, idx))
        ctx.grads = (gh, gw, None if gb is None else gb.to(bias.dtype))
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError(
                "linear_f_divergence(reduction='sum') gradients were already consumed: backpropagate once"
            )
        grads, ctx.grads = ctx.grads, None
        go = grad_out.reshape(())
        scaled = [None if g is None else g.mul_(go.to(g.dtype)) for g in grads]
        return (*scaled, None, None, None, None, None, None, None, None, None)


def _check(name: str, t: torch.Tensor | None, shape: tuple, dtype: torch.dtype | None = None) -> None:
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t is not None and dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} is {t.dtype}, expected {dtype} (the dtype of the hidden states it multiplies)")


def linear_f_divergence(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    alpha: float = 0.5,
    *,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    chunk_size: int = 256,
    reduction: str = "none",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact divergence over the vocabulary at each position, from the policy's last hidden states ``hidden``
    (``[..., H]``) and its lm_head ``weight`` (``[V, H]``, optional ``bias`` ``[V]``), without ever materialising the
    ``[N, V]`` logits or their gradient. With ``z = (hidden @ weight.T + bias) / temperature``, ``pi = softmax(z)``
    and ``pi_ref = softmax(z_ref)``:

    * ``reverse_kl``: ``KL(pi || pi_ref) = sum_v pi_v log(pi_v / pi_ref_v)``
    * ``forward_kl``: ``KL(pi_ref || pi) = sum_v pi_ref_v log(pi_ref_v / pi_v)``
    * ``js``: ``1/2 KL(pi || M) + 1/2 KL(pi_ref || M)``, ``M = (pi + pi_ref)/2`` (in ``[0, log 2]``)
    * ``alpha``: ``(sum_v pi_v^(1-a) pi_ref_v^a - 1) / (a (a - 1))`` (f-DPO's alpha-divergence, Wang et al. 2023,
      arXiv 2309.16240; ``a = 0`` is reverse KL, ``a = 1`` forward KL, computed exactly as the KLs).

    The reference is given either as ``ref_logits`` (``[..., V]``, used as-is: already divided by the temperature)
    or as ``ref_hidden``/``ref_weight``/``ref_bias`` (``z_ref = (ref_hidden @ ref_weight.T + ref_bias) /
    temperature``, also chunked; its hidden size may differ from the policy's). Exactly one form; the reference
    gets no gradient (tensors requiring grad are refused). ``mask`` (broadcastable to ``hidden.shape[:-1]``) selects
    positions: masked ones give 0 and no gradient and are not computed. Returns ``hidden.shape[:-1]`` in float32
    (float64 for float64 inputs). Gradients flow to whichever of ``hidden``, ``weight``, ``bias`` require grad; the
    result can be backpropagated once per graph as usual, but not twice-differentiated.

    Cost: the idea of the "fused linear" losses of Liger Kernel (Hsu et al. 2024, arXiv 2410.10989): the forward
    pass computes ``chunk_size`` positions' logits at a time (one ``[chunk, H] x [H, V]`` matmul per chunk, two
    with ``ref_hidden``) and keeps only the inputs; the backward pass recomputes them and applies the closed-form
    logits gradient ``g`` of :func:`~rlkit.divergences.exact.f_divergence`'s fused path, scaled by the incoming
    per-row gradient and ``1/temperature``: ``grad_hidden = g @ W``, ``grad_W += g.T @ hidden``, ``grad_b +=
    sum_rows g`` (three matmuls per chunk, recompute + two, four with ``ref_hidden``; all of the same
    ``2 chunk H V`` flops). So about 4/3 of the matmul time of plain autograd on materialised logits, for extra
    memory ``O(chunk_size x V)`` plus the gradients of ``hidden``/``weight``/``bias``, instead of
    ``f_divergence``'s floor of one float32 ``[N, V]`` gradient (a ``ref_logits`` input is read chunk by chunk,
    strided views such as ``logits[:, :-1]`` included).

    ``reduction="sum"`` returns the scalar ``sum_positions weights * D`` (``weights`` broadcastable to
    ``hidden.shape[:-1]``, default 1; e.g. ``mask / mask.sum()`` for a token mean): the gradient is then known in
    the forward pass, so each chunk's logits are computed once and the backward pass only scales the accumulated
    gradients: three matmuls per chunk, as many as plain autograd, for the same memory. Low-precision (bf16/fp16)
    inputs: the matmuls run in that dtype (so the logits carry its rounding), the softmax math per chunk in float32, and
    ``grad_W`` is accumulated over chunks in the weight's dtype.
    """
    if divergence not in _ANALYTIC:
        raise ValueError(
            f"linear_f_divergence supports {', '.join(_ANALYTIC)} (closed-form gradients), "
            f"not {divergence!r}; use f_divergence on materialised logits for the others"
        )
    name = canonical(divergence, alpha)
    if (ref_logits is None) == (ref_hidden is None):
        raise ValueError("give the reference either as ref_logits or as ref_hidden + ref_weight (exactly one)")
    if ref_hidden is not None and ref_weight is None:
        raise ValueError("ref_hidden needs ref_weight (the reference's lm_head weight [V, H_ref])")
    if ref_hidden is None and (ref_weight is not None or ref_bias is not None):
        raise ValueError("ref_weight/ref_bias go with ref_hidden, not with ref_logits")
    for nm, t in (
        ("ref_logits", ref_logits),
        ("ref_hidden", ref_hidden),
        ("ref_weight", ref_weight),
        ("ref_bias", ref_bias),
    ):
        if t is not None and t.requires_grad:
            raise ValueError(f"{nm} requires grad: the reference gets no gradient here, pass {nm}.detach()")
    if weight.dim() != 2 or hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not match: expected "
            f"hidden [..., H] and weight [V, H]"
        )
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not (0.0 < float(temperature) < float("inf")):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    lead, vocab = tuple(hidden.shape[:-1]), weight.shape[0]
    _check("weight", weight, weight.shape, hidden.dtype)
    _check("bias", bias, (vocab,), hidden.dtype)
    if ref_logits is not None:
        _check("ref_logits", ref_logits, lead + (vocab,))
        try:  # a strided ref_logits (e.g. logits[:, :-1]) is gathered per chunk, never copied whole
            ref = ref_logits.view(-1, vocab)
        except RuntimeError:
            ref = ref_logits
    else:
        assert ref_hidden is not None and ref_weight is not None  # refused above otherwise
        if ref_weight.dim() != 2 or ref_hidden.dim() < 1:
            raise ValueError(f"ref_weight must be [V, H_ref], got {tuple(ref_weight.shape)}")
        _check("ref_hidden", ref_hidden, lead + (ref_weight.shape[1],), ref_weight.dtype)
        _check("ref_weight", ref_weight, (vocab, ref_weight.shape[1]))
        _check("ref_bias", ref_bias, (vocab,), ref_weight.dtype)
        ref = ref_hidden.reshape(-1, ref_hidden.shape[-1])
    flat = hidden.reshape(-1, hidden.shape[-1])
    if mask is None:
        rows = torch.arange(flat.shape[0], device=hidden.device)
    else:
        mask = torch.broadcast_to(mask.to(device=hidden.device, dtype=torch.bool), lead)
        rows = mask.reshape(-1).nonzero().squeeze(-1)
    if reduction == "sum":
        row_w = torch.ones((), device=hidden.device) if weights is None else weights.detach()
        row_w = torch.broadcast_to(row_w.to(device=hidden.device, dtype=_compute_dtype(hidden)), lead).reshape(-1)
        return _LinearDivergenceSum.apply(
            flat,
            weight,
            bias,
            ref,
            ref_weight,
            ref_bias,
            rows,
            row_w,
            name,
            float(alpha),
            float(temperature),
            chunk_size,
        )
    if reduction != "none":
        raise ValueError(f"reduction must be 'none' or 'sum', got {reduction!r}")
    if weights is not None:
        raise ValueError("weights go with reduction='sum' (with 'none', multiply the per-position result)")
    out = _LinearDivergence.apply(
        flat, weight, bias, ref, ref_weight, ref_bias, rows, name, float(alpha), float(temperature), chunk_size
    )
    return out.reshape(lead)
