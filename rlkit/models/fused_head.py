"""Token log-probs and entropy from the last hidden states and the lm_head weight, never holding ``[N, V]`` logits.

The learner's ``grpo.fused_head`` path: :func:`completion_hidden` runs the model's decoder trunk and returns the
hidden states that predict each completion token with the lm_head's weight and bias; :func:`linear_token_logprobs`
turns them into log-probs (and entropies) chunk by chunk, and exact divergences use
:func:`rlkit.divergences.linear.linear_f_divergence` on the same tensors. Imports torch only.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rlkit.divergences.exact import _compute_dtype
from rlkit.divergences.linear import _logits, _work

#: config fields of output transforms applied after the lm_head (Gemma2/3 softcapping, Cohere ``logit_scale``,
#: Granite ``logits_scaling``, Falcon-H1 ``lm_head_multiplier``, MiniCPM's ``dim_model_base`` width scaling), with
#: their neutral value: any other value means ``model(...).logits`` is not ``hidden @ W.T + b``
_LOGIT_TRANSFORMS = {
    "final_logit_softcapping": None,
    "logit_softcapping": None,
    "logit_scale": 1.0,
    "logits_scaling": 1.0,
    "lm_head_multiplier": 1.0,
    "output_multiplier_scale": 1.0,
    "dim_model_base": None,
}


class _LinearTokenLogprobs(torch.autograd.Function):
    """Forward: per chunk, the logits, their logsumexp, the token's logit (and the entropy); saves the inputs and the
    ``[N]`` logsumexp. Backward: recompute each chunk's logits, ``g = (onehot - softmax) * grad / temperature`` in a
    reusable ``[chunk, V]`` buffer, then ``grad_h = g @ W``, ``grad_W += g.T @ h``, ``grad_b += sum_rows g``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, temperature, chunk, with_entropy):
        dtype, n = _compute_dtype(hidden), hidden.shape[0]
        lp = torch.empty(n, dtype=dtype, device=hidden.device)
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device) if with_entropy else None
        buf = None
        for s in range(0, n, chunk):
            z = _logits(hidden[s : s + chunk], weight, bias, temperature, dtype)
            lse_c = torch.logsumexp(z, -1)
            lse[s : s + chunk] = lse_c
            lp[s : s + chunk] = z.gather(-1, tokens[s : s + chunk].unsqueeze(-1)).squeeze(-1) - lse_c
            if with_entropy:  # H = lse - sum_v p_v z_v
                buf, p = _work(buf, z)
                torch.sub(z, lse_c.unsqueeze(-1), out=p).exp_()
                ent[s : s + chunk] = (lse_c - torch.einsum("nv,nv->n", p, z)).float()
            del z
        ctx.save_for_backward(hidden, weight, bias, tokens, lse)
        ctx.cfg = (temperature, chunk)
        if ent is None:
            return lp, None
        ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lp, grad_ent=None):
        hidden, weight, bias, tokens, lse = ctx.saved_tensors
        temperature, chunk = ctx.cfg
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype, n = _compute_dtype(hidden), hidden.shape[0]
        gh = torch.zeros_like(hidden) if need_h else None
        gw = torch.zeros_like(weight) if need_w else None
        gb = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if need_b else None
        scale = grad_lp.to(dtype) / temperature  # dlp/dh = (onehot - p) / T @ W
        buf = None
        for s in range(0, n, chunk):
            h = hidden[s : s + chunk]
            z = _logits(h, weight, bias, temperature, dtype)
            buf, g = _work(buf, z)
            torch.sub(z, lse[s : s + chunk].unsqueeze(-1), out=g).exp_().neg_()  # -softmax
            del z
            g.scatter_add_(-1, tokens[s : s + chunk].unsqueeze(-1), torch.ones_like(g[:, :1]))
            g.mul_(scale[s : s + chunk].unsqueeze(-1))
            if need_b:
                gb.add_(g.sum(0))
            g_in = g.to(weight.dtype)  # the matmuls run in the inputs' dtype, as the forward one does
            if need_h:
                torch.mm(g_in, weight, out=gh[s : s + chunk])
            if need_w:
                gw.addmm_(g_in.t(), h)
        gb = gb.to(bias.dtype) if need_b else None
        return gh, gw, gb, None, None, None, None


def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = False,
):
    """``log softmax(z)[tokens]`` per position with ``z = (hidden @ weight.T + bias) / temperature``, i.e.
    ``z_token - logsumexp_v z_v``, from the last hidden states ``hidden`` (``[..., H]``), the lm_head ``weight``
    (``[V, H]``, optional ``bias`` ``[V]``) and ``tokens`` (``[...]``, long), without materialising the ``[N, V]``
    logits or their gradient. With ``with_entropy`` also returns the per-position entropy
    ``H = -sum_v p_v log p_v = logsumexp z - sum_v p_v z_v`` (float32, no gradient): ``(logprobs, entropy)``.

    Log-probs are float32 (float64 for float64 inputs) and differentiable in ``hidden``, ``weight`` and ``bias``
    (once). The forward pass computes ``chunk_size`` positions' logits at a time and keeps the inputs and the ``[N]``
    logsumexp; the backward pass recomputes them and applies the closed-form gradient
    ``dlp/dz = onehot(token) - softmax(z)``, scaled by the incoming gradient and ``1/temperature``: ``grad_hidden =
    g @ W``, ``grad_W += g.T @ hidden``, ``grad_b += sum_rows g``. Extra memory ``O(chunk_size x V)``. This is the
    "fused linear cross-entropy" of Liger Kernel (Hsu et al. 2024, arXiv 2410.10989) and of verl's fused kernels,
    written as chunked torch ops. Low-precision inputs: the matmuls run in their dtype, the softmax math in float32,
    gradients come back in the inputs' dtypes (``grad_W`` accumulated over chunks in the weight's dtype).
    """
    if weight.dim() != 2 or hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not match: expected "
            f"hidden [..., H] and weight [V, H]"
        )
    if tuple(tokens.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}, expected {tuple(hidden.shape[:-1])}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not (0.0 < float(temperature) < float("inf")):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    lead = tuple(tokens.shape)
    flat = hidden.reshape(-1, hidden.shape[-1])
    lp, ent = _LinearTokenLogprobs.apply(
        flat, weight, bias, tokens.reshape(-1).long(), float(temperature), chunk_size, bool(with_entropy)
    )
    return (lp.reshape(lead), ent.reshape(lead)) if with_entropy else lp.reshape(lead)


def _unwrap(model):
    """``(causal LM, decoder trunk, lm_head)``, or ``None`` when ``model(...).logits`` may not be ``lm_head(trunk)``."""
    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
        return None  # prompt tuning prepends virtual tokens in the wrapper's forward
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not torch.nn.Linear or head._forward_hooks or head._forward_pre_hooks:
        return None  # a peft-wrapped, quantized or hooked head: not a plain F.linear
    for cfg in (getattr(base, "config", None), getattr(getattr(base, "config", None), "text_config", None)):
        for name, neutral in _LOGIT_TRANSFORMS.items():
            value = getattr(cfg, name, None)
            if value is not None and value != neutral:
                return None
    get = getattr(base, "get_decoder", None)
    trunk = get() if callable(get) else None
    trunk = trunk if trunk is not None else getattr(base, "model", None)
    if trunk is None or trunk is base or trunk is model or not isinstance(trunk, torch.nn.Module):
        return None
    return base, trunk, head


def plain_lm_head(model) -> torch.nn.Linear | None:
    """The lm_head when the model's logits are ``F.linear(trunk output, lm_head)`` as far as its type and config
    tell (:func:`fused_head_agrees` checks the numbers), else ``None``."""
    parts = _unwrap(model)
    return None if parts is None else parts[2]


def completion_hidden(model, batch: dict, group: torch.Tensor | None = None):
    """``(hidden [B, T, H], weight [V, H], bias [V] or None)``: the decoder trunk's final hidden states at the
    positions that predict each completion token (``P - 1 .. P + T - 2``, the positions whose logits
    :func:`rlkit.models.forward.completion_logits` returns; those logits are ``F.linear(hidden, weight, bias)``, before
    the temperature) and the lm_head's parameters (tied weights included: gradients reach the embedding). ``None``
    when the head is not a plain ``torch.nn.Linear`` (e.g. wrapped by peft) or the config names a logit transform
    (softcapping, ``logit_scale``): the caller then uses the logits. peft-wrapped models run their base's trunk,
    whose linear layers carry the adapters. ``group`` (:func:`rlkit.models.prefix.prompt_groups`): each distinct prompt
    runs through the trunk once."""
    parts = _unwrap(model)
    if parts is None:
        return None
    _, trunk, head = parts
    P, T = batch["prompt_len"], batch["completion_ids"].shape[1]
    if group is not None:
        from rlkit.models.prefix import shared_prefix_outputs

        hidden = shared_prefix_outputs(trunk, batch, group, logits=False)
        return hidden, head.weight, head.bias
    out = trunk(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    hidden = out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out[0])
    if hidden.dim() != 3 or hidden.shape[-1] != head.in_features or hidden.shape[1] < P + T - 1:
        return None
    return hidden[:, P - 1 : P + T - 1].contiguous(), head.weight, head.bias  # one copy that later views share


@torch.no_grad()
def fused_head_agrees(model, batch: dict, rows: int = 1) -> bool:
    """One-time guard: the first ``rows`` sequences' ``F.linear`` of :func:`completion_hidden` equal the model's own
    completion logits (in eval mode, no grad), so an output transform the config does not name is caught."""
    from rlkit.models.forward import completion_logits
    from rlkit.models.precision import compute_dtype

    sub = {k: (v[:rows] if torch.is_tensor(v) else v) for k, v in batch.items()}
    was_training = model.training
    model.eval()
    try:
        parts = completion_hidden(model, sub)
        if parts is None:
            return False
        want = completion_logits(model, sub).float()
        got = torch.nn.functional.linear(*parts).float()
    finally:
        model.train(was_training)
    # the tolerance of the model's own matmul dtype (bf16-mixed: bfloat16 under autocast, while F.linear here is
    # float32): the check is for a transform the config does not name, which is far beyond rounding
    exact = compute_dtype(model) in (torch.float32, torch.float64)
    tol = (1e-4 if exact else 2e-2) * max(1.0, float(want.abs().max()))
    return got.shape == want.shape and float((got - want).abs().max()) <= tol


@torch.no_grad()
def fused_base_logprobs(model, batch: dict, temperature: float = 1.0, group: torch.Tensor | None = None) -> dict | None:
    """LoRA learners: ``{"logprobs": [B, T]}`` of the adapter-disabled model (as
    :func:`rlkit.models.lora.base_model_outputs` without logits) through the fused head; ``None`` if unsupported."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            parts = completion_hidden(model, batch, group)
            if parts is None:
                return None
            hidden, weight, bias = parts
            return {"logprobs": linear_token_logprobs(hidden, weight, batch["completion_ids"], bias, temperature)}
    finally:
        model.train(was_training)
