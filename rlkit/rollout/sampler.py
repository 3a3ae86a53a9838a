"""A lean batched sampling loop over a Hugging Face causal LM's KV cache: the transformers engine's default.

``transformers``' ``generate`` is general (beam search, logits processors, stopping criteria, streaming, every cache
kind) and pays for that generality on every decoding step. RL rollouts need much less: sample ``n`` completions per
prompt with temperature/top-k/top-p, record the log-probability of every sampled token, stop at EOS. This loop does
just that, with four savings ``generate`` does not make:

* **Shared prefill.** The ``n`` completions of a prompt share its KV cache: each distinct prompt is run through the
  model once and its cache is repeated ``n`` times (``Cache.batch_repeat_interleave``), so the prefill costs
  ``1/n`` of ``generate``'s, which prefills every copy.
* **Finished rows leave the batch.** When at least ``compact_fraction`` of the rows still being decoded have emitted
  EOS, they are dropped from the batch and from the cache (``Cache.batch_select_indices``); the long tail of a
  batch no longer decodes padding for the rows that are done.
* **A preallocated KV cache.** After the prefill, each layer of a ``DynamicCache`` is given room for
  ``max_new_tokens`` more positions (:mod:`rlkit.models.kv_reserve`) and every step writes its token's keys/values
  in place, where ``DynamicCache`` copies the whole cache with ``torch.cat`` per token (``O(T^2)`` bytes). Other
  cache kinds (sliding-window, quantized, ...) are left as they are.
* **No per-step machinery.** One forward, one ``logits_to_keep=1`` slice, the warpers in plain torch, one
  inverse-CDF draw (:func:`draw`); the 2-D attention mask and positions are extended in place. For Llama, Qwen2
  and Qwen3 models (:mod:`rlkit.models.decode_step`, which says exactly when) each decoding step runs the model's own
  modules and functions without the forward's decorators, mask builder and output classes; the logits are the
  forward's.

Sampling semantics (those of ``generate`` with ``do_sample=True`` and of vLLM): the logits are divided by the
temperature, then all but the ``top_k`` largest are removed (``top_k=0``: off), then the smallest tokens whose
total probability is at most ``1 - top_p`` are removed (nucleus sampling, Holtzman et al. 2020; at least one token
is kept). The recorded log-probability is that of the sampled token under this processed distribution, which is
the distribution the token was drawn from. ``greedy`` takes the argmax and records its log-probability under the
unprocessed softmax. Only these parameters apply: a model's ``generation_config`` (e.g. a checkpoint's default
``repetition_penalty``) is not read, exactly as with the vLLM engine.

Requirements on the model: a decoder-only ``transformers`` model whose forward takes ``attention_mask``,
``position_ids``, ``use_cache`` and its KV cache (``cache`` from transformers 5.2x, ``past_key_values`` before:
:mod:`rlkit.models.cache`) and returns a ``Cache`` (every standard decoder since transformers 4.36).
:func:`supports_native_sampling` checks this; the engine falls back to ``generate`` otherwise.
"""

from __future__ import annotations

import functools

import torch

from rlkit.models.cache import cache_kwarg, forward_params, returned_cache
from rlkit.models.precision import autocast_region


def supports_native_sampling(model) -> str | None:
    """``None`` when :func:`sample` can drive ``model``; otherwise the reason it cannot (the engine then uses
    ``generate`` and prints the reason)."""
    params = forward_params(model)
    missing = [p for p in ("attention_mask", "position_ids", "use_cache") if p not in params]
    if cache_kwarg(model) is None:
        missing.append("cache / past_key_values")
    if missing:
        return f"{type(model).__name__}.forward takes no {', '.join(missing)}"
    if getattr(model.config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    return None


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on ``[B, V]`` float logits; removed tokens become ``-inf``."""
    if temperature != 1.0:
        logits = logits / temperature
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending: the tail comes first
        tail_mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = tail_mass <= 1.0 - top_p
        drop_sorted[..., -1] = False  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``logp`` ``[B, V]`` (log-probabilities; ``-inf`` = never), drawn by inverse CDF.

    Row ``b`` returns the first ``v`` with ``F_b(v) > u_b * F_b(V - 1)``, where ``F_b`` is the cumulative sum of
    ``exp(logp[b])`` (in float64) and ``u_b ~ U[0, 1)``: token ``v`` is drawn with probability
    ``p_v / sum(p)``, exactly the distribution of ``torch.multinomial(logp.exp(), 1)``. The cost is one uniform and
    one cumulative sum per row; ``multinomial`` draws one exponential variate per vocabulary entry (9 ms for
    ``[16, 32000]`` against 0.5 ms here, on 2 cores), which made it most of the sampling loop at a 32k vocabulary.
    The random stream differs from ``multinomial``'s, so seeded samples differ from those drawn before rlkit used
    this (the distribution does not)."""
    probs = logp.exp()
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=torch.float64, device=probs.device)
    return invert_cdf(probs, u)


def invert_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``[B]``: for each row the first ``v`` with ``cumsum(probs)[v] > u * sum(probs)``; ``probs`` ``[B, V]``
    unnormalised, ``u`` ``[B, 1]`` in ``[0, 1]``. The strict ``>`` (``searchsorted(..., right=True)``) never
    returns a zero-probability token (its cumulative sum equals its predecessor's); the target is kept just below
    the row's total, so ``u = 1`` (or ``u * sum`` rounding up to the sum) gives the row's last token of positive
    probability, with no host synchronisation on the decoding path."""
    cdf = probs.cumsum(-1, dtype=torch.float64)
    total = cdf[:, -1:]
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


@torch.no_grad()
def sample(
    model,
    prompts: list[list[int]],
    n: int,
    max_new_tokens: int,
    *,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    compact_fraction: float = 0.25,
):
    """``n`` completions for each prompt (grouped: rows ``[i*n, (i+1)*n)`` belong to prompt ``i``).

    Returns ``(tokens, logprobs, lengths)``: ``tokens`` ``[len(prompts)*n, max_new_tokens]`` long (``pad_id`` after
    a row's end), ``logprobs`` the same shape in float32 (0 after the end), ``lengths`` ``[rows]`` long, counting an
    emitted EOS. ``model`` must be in eval mode (the caller's job: the engine switches it for the call).

    A ``bf16-mixed`` model (:mod:`rlkit.models.precision`) decodes inside one autocast region, so each weight is cast
    to bfloat16 once per call instead of once per token (autocast's cast cache lives until its outermost region
    ends)."""
    with autocast_region(model):
        return _sample(
            model,
            prompts,
            n,
            max_new_tokens,
            eos_id=eos_id,
            pad_id=pad_id,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            generator=generator,
            compact_fraction=compact_fraction,
        )


def _sample(
    model, prompts, n, max_new_tokens, *, eos_id, pad_id, temperature, top_k, top_p, greedy, generator, compact_fraction
):
    from rlkit.models import kv_reserve  # here, not at the top: importing the sampler imports no transformers
    from rlkit.models.decode_step import decode_step

    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError("sample: every prompt needs at least one token")
    device = next(model.parameters()).device
    B0, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B0, P), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((B0, P), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):  # left padding: every row's next token goes in the same column
        ids[i, P - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    kw = {"logits_to_keep": 1} if "logits_to_keep" in forward_params(model) else {}
    cache_name = cache_kwarg(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
    cache, logits = returned_cache(out), out.logits[:, -1].float()
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
    kv_reserve.reserve(cache, max_new_tokens)  # decode into preallocated buffers, no per-token cat (if a DynamicCache)
    rows = B0 * n
    next_pos = mask.sum(-1, keepdim=True)  # [rows, 1]: the position of each row's next token
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.full((rows,), max_new_tokens, dtype=torch.long, device=device)
    active = torch.arange(rows, device=device)  # the original row of each row still in the batch
    can_compact = hasattr(cache, "batch_select_indices")
    mask = torch.cat([mask, mask.new_ones((rows, max_new_tokens))], dim=1)  # grown by slicing, never re-allocated
    width = P
    step = decode_step(model)  # the decoding steps without transformers' per-call machinery, where it applies
    forward = functools.partial(_forward, model, cache_name)
    alive = torch.ones(rows, dtype=torch.bool, device=device)  # per batch row: still decoding
    for t in range(max_new_tokens):
        if greedy:
            tok = logits.argmax(-1)
            lp = torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
        else:
            logp = torch.log_softmax(process_logits(logits, temperature, top_k, top_p), -1)
            tok = draw(logp, generator)
            lp = logp.gather(-1, tok[:, None]).squeeze(-1)
        rows_t = active[alive]
        tokens[rows_t, t], logprobs[rows_t, t] = tok[alive], lp[alive]
        ended = alive & (tok == eos_id)
        lengths[active[ended]] = t + 1
        alive = alive & ~ended
        if t == max_new_tokens - 1 or not alive.any():
            break
        if can_compact and (~alive).sum() >= compact_fraction * len(active):
            idx = alive.nonzero().squeeze(-1)
            cache.batch_select_indices(idx)
            active, tok, next_pos, mask, alive = active[idx], tok[idx], next_pos[idx], mask[idx], alive[idx]
        # a finished row left in the batch feeds padding: it attends only to itself and its outputs are ignored
        tok = tok.masked_fill(~alive, pad_id)
        width += 1
        if step is not None and step.verified:
            logits = step(tok, next_pos, mask[:, :width], cache)
        elif step is not None:  # the first step for this model: both ways, the lean one kept if they agree
            logits, cache = step.checked(forward, tok, next_pos, mask[:, :width], cache)
        else:
            logits, cache = forward(tok, next_pos, mask[:, :width], cache)
        logits, next_pos = logits.float(), next_pos + 1
    return tokens, logprobs, lengths


def _forward(model, cache_name: str, tok: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache):
    """The model's forward of one token per row: ``(logits [rows, V], cache)``."""
    out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, use_cache=True, **{cache_name: cache})
    return out.logits[:, -1], returned_cache(out)
