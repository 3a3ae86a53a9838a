"""rlkit.models.decode_step against the model's own forward: the logits of every decoding step are the forward's,
bit for bit, for each family it runs (Llama with grouped-query attention and biases, Qwen2, Qwen3's per-head
query/key norms), both attention kernels, float32 and bf16-mixed, with and without left padding; the native sampler
draws the same tokens and log-probs with it as without; and every case it must not run is refused with its reason."""

import copy

import pytest
import torch

import rlkit.models.decode_step as decode_module
from rlkit.models import kv_reserve
from rlkit.models.cache import cache_kwarg, returned_cache
from rlkit.models.decode_step import DecodeStep, decode_step, why_not
from rlkit.models.precision import autocast_region, enable_autocast
from rlkit.models.tiny import build_tiny_model
from rlkit.rollout.sampler import sample

VOCAB = 64


def build(family: str, kernel: str = "eager", precision: str = "float32", **extra):
    """A 2-layer model of ``family`` with 4 query heads over 2 key/value heads and a sharp head (no near-ties)."""
    import transformers

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    if family == "Llama":
        common.update(attention_bias=True, mlp_bias=True)
    if family == "Qwen3":
        common.update(head_dim=16)
    config = getattr(transformers, f"{family}Config")(**{**common, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # biases and norms away from their init (0 and 1), so dropping one shows
            p.add_(torch.randn_like(p) * 0.05)
    model.set_attn_implementation(kernel)
    return enable_autocast(model) if precision == "bf16-mixed" else model


def prefill(model, prompts: list[list[int]], room: int):
    """The sampler's prefill: left-padded prompts through the forward, the cache reserved for ``room`` tokens."""
    P = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), P), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :], mask[i, P - len(p) :] = torch.tensor(p), 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache = returned_cache(out)
    kv_reserve.reserve(cache, room)
    return cache, mask, mask.sum(-1, keepdim=True), out.logits[:, -1]


PADDED = [[5, 9, 11, 3], [7, 2], [30, 31, 32, 33], [40]]
UNPADDED = [[5, 9, 11], [7, 2, 8], [30, 31, 32], [40, 41, 42]]


@pytest.mark.parametrize("family", ["Llama", "Qwen2", "Qwen3"])
@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
@pytest.mark.parametrize("precision", ["float32", "bf16-mixed"])
@pytest.mark.parametrize("prompts", [PADDED, UNPADDED], ids=["left-padded", "no-padding"])
def test_every_step_has_the_forwards_logits_bit_for_bit(family, kernel, precision, prompts):
    model = build(family, kernel, precision)
    assert why_not(model) is None
    steps = 6
    with torch.no_grad(), autocast_region(model):
        cache, mask, pos, logits = prefill(model, prompts, steps)
        step = DecodeStep(model)
        theirs = copy.deepcopy(cache)
        mask = torch.cat([mask, mask.new_ones((len(prompts), steps))], dim=1)
        width = mask.shape[1] - steps
        for _ in range(steps):
            tok = logits.float().argmax(-1)
            width += 1
            out = model(
                input_ids=tok[:, None],
                attention_mask=mask[:, :width],
                position_ids=pos,
                use_cache=True,
                **{cache_kwarg(model): theirs},
            )
            expected = out.logits[:, -1]
            logits = step(tok, pos, mask[:, :width], cache)
            assert logits.dtype == expected.dtype or precision == "bf16-mixed"
            assert torch.equal(logits.float(), expected.float())
            pos = pos + 1
        for mine, other in zip(cache.layers, theirs.layers):  # the cache holds what the forward's holds
            assert torch.equal(mine.keys, other.keys) and torch.equal(mine.values, other.values)


@pytest.mark.parametrize("precision", ["float32", "bf16-mixed"])
@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_the_sampler_draws_the_same_with_and_without_it(precision, kernel, monkeypatch):
    """Sampled with top-k/top-p, rows ending at EOS at different steps (so finished rows leave the batch and the
    cache), prompts of different lengths: tokens, log-probs and lengths are identical, and the step ran."""
    model = build_tiny_model(seed=3).eval()
    with torch.no_grad():
        model.lm_head.weight[1].mul_(20.0)  # EOS (id 1, tied to its embedding) comes at various steps
    model.set_attn_implementation(kernel)
    if precision == "bf16-mixed":
        enable_autocast(model)
    prompts = [[10, 11, 12, 20], [13, 14], [15, 16, 17], [18]]

    def draw():
        return sample(model, prompts, 4, 10, eos_id=1, pad_id=0, top_k=20, top_p=0.95,
                      generator=torch.Generator().manual_seed(7))  # fmt: skip

    calls = []
    real_call = DecodeStep.__call__

    def counted(self, *args):
        calls.append(self.verified)
        return real_call(self, *args)

    monkeypatch.setattr(DecodeStep, "__call__", counted)
    mine = draw()
    monkeypatch.setattr(decode_module, "decode_step", lambda m: None)
    theirs = draw()
    assert calls[0] is False and calls[1:] and all(calls[1:]), "checked on the first step, then used alone"
    ended = (mine[2] < 10).sum().item()
    assert 0 < ended < len(mine[2]), "some rows, not all, must end early for the compaction to be exercised"
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b)


def test_a_step_that_disagrees_with_the_forward_is_dropped_for_that_model(monkeypatch, capsys):
    """The run-time check: a step whose logits are off by 1e-4 is caught on its first step, the sample is the
    forward's, one line says so, and that model is not given a step again in that setting (another model is)."""
    model, other = build("Llama"), build("Llama")
    prompts = [[5, 9, 11], [7, 2]]

    def draw(m):
        return sample(m, prompts, 3, 6, eos_id=1, pad_id=0, generator=torch.Generator().manual_seed(1))

    monkeypatch.setattr(decode_module, "decode_step", lambda m: None)
    expected = draw(model)
    monkeypatch.undo()
    real_call = DecodeStep.__call__
    monkeypatch.setattr(DecodeStep, "__call__", lambda self, *a: real_call(self, *a) + 1e-4)
    got = draw(model)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    out = capsys.readouterr().out
    assert "the lean decoding step's logits differ from LlamaForCausalLM's forward" in out
    assert "decoding through the forward" in out
    assert decode_step(model) is None and why_not(model) is None
    assert isinstance(decode_step(other), DecodeStep)  # the verdict is the model's, not the class's
    model.set_attn_implementation("sdpa")  # another setting is checked afresh
    assert isinstance(decode_step(model), DecodeStep)


def test_a_step_that_raises_is_dropped_and_the_sample_is_the_forwards(monkeypatch, capsys):
    """A step broken by, say, a transformers release that renamed an attribute: the first step's exception is
    caught, the forward continues, one line names the error."""
    model = build("Qwen2")
    prompts = [[5, 9, 11], [7, 2]]

    def draw():
        return sample(model, prompts, 2, 5, eos_id=1, pad_id=0, generator=torch.Generator().manual_seed(2))

    monkeypatch.setattr(decode_module, "decode_step", lambda m: None)
    expected = draw()
    monkeypatch.undo()

    def broken(self, *args):
        raise AttributeError("'Qwen2Attention' object has no attribute 'scaling'")

    monkeypatch.setattr(DecodeStep, "__call__", broken)
    got = draw()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert "(AttributeError: 'Qwen2Attention' object has no attribute 'scaling')" in capsys.readouterr().out
    assert decode_step(model) is None


def test_what_it_refuses_and_why():
    llama = build("Llama")
    assert why_not(llama) is None and isinstance(decode_step(llama), DecodeStep)
    assert why_not(build("Llama", precision="bf16-mixed")) is None  # rlkit's autocast wrapper is allowed

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2))
    assert "GPT2LMHeadModel is not one of" in why_not(gpt2) and decode_step(gpt2) is None

    flex = build("Llama")
    flex.config._attn_implementation = "flex_attention"
    assert "attention kernel 'flex_attention'" in why_not(flex)

    hooked = build("Llama")
    handle = hooked.model.layers[1].mlp.register_forward_hook(lambda *a: None)
    assert why_not(hooked) == "module model.layers.1.mlp has a forward hook"
    handle.remove()
    assert why_not(hooked) is None
    pre = hooked.model.norm.register_forward_pre_hook(lambda *a: None)
    assert "model.norm has a forward hook" in why_not(hooked)
    pre.remove()

    glob = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert why_not(llama) == "a global forward hook is registered"
    finally:
        glob.remove()

    patched = build("Llama")
    patched.model.layers[0].self_attn.forward = lambda *a, **k: None
    assert why_not(patched) == "module model.layers.0.self_attn has a forward of its own"

    swapped = build("Llama")
    swapped.model.layers[0].mlp.up_proj = torch.nn.Sequential(swapped.model.layers[0].mlp.up_proj)
    assert why_not(swapped) == "layer 0: a projection is not the family's own module"

    sliding = build("Qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert "sliding window" in why_not(sliding)


def test_a_lora_model_decodes_through_its_forward():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build("Llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert why_not(model).startswith(f"{type(model).__name__} is not one of")
    assert why_not(model.get_base_model()) == "layer 0: a projection is not the family's own module"
