"""The preallocated KV cache (rlkit.models.kv_reserve): a ReservedLayer behaves as the DynamicLayer it replaces
(checked against a plain DynamicCache fed the same states), the native sampler gives the same tokens and log-probs
with it as without it (rows leaving the batch included), and the sampler really decodes into it."""

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from rlkit.models import kv_reserve
from rlkit.models.kv_reserve import ReservedLayer, reserve
from rlkit.models.tiny import PAD_ID, build_tiny_model, build_tiny_tokenizer
from rlkit.rollout.sampler import sample

B, H, D = 3, 2, 4


def states(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, H, length, D, generator=g), torch.randn(batch, H, length, D + 1, generator=g)


def both(batch: int = B, length: int = 5, extra: int = 4, layers: int = 2) -> tuple[DynamicCache, DynamicCache]:
    """A reference DynamicCache and a reserved one after the same prefill."""
    ref, res = DynamicCache(), DynamicCache()
    for i in range(layers):
        for c in (ref, res):
            c.update(*states(batch, length, seed=i), i)
    assert reserve(res, extra)
    return ref, res


def step(ref: DynamicCache, res: DynamicCache, seed: int, batch: int | None = None, length: int = 1) -> None:
    """The same update on both caches; the returned states and every layer's view must agree."""
    for i in range(len(ref.layers)):
        kv = states(batch or ref.layers[i].keys.shape[0], length, seed=100 * seed + i)
        want, got = ref.update(*kv, i), res.update(*kv, i)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    same(ref, res)


def same(ref: DynamicCache, res: DynamicCache) -> None:
    for a, b in zip(ref.layers, res.layers):
        assert type(b) is ReservedLayer
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert a.get_seq_length() == b.get_seq_length()
        assert a.get_mask_sizes(1) == b.get_mask_sizes(1)
        assert b.keys.data_ptr() == b.key_buf.data_ptr() and b.values.data_ptr() == b.value_buf.data_ptr()
    assert ref.get_seq_length() == res.get_seq_length()


def test_updates_write_in_place_into_views_of_the_buffers():
    ref, res = both(length=5, extra=4)
    same(ref, res)
    layer = res.layers[0]
    assert layer.capacity() == 9 and layer.key_buf.shape == (B, H, 9, D) and layer.value_buf.shape == (B, H, 9, D + 1)
    buf = layer.key_buf.data_ptr()
    for t in range(4):
        step(ref, res, seed=t)
    assert layer.key_buf.data_ptr() == buf  # filled to capacity without a reallocation
    assert layer.get_seq_length() == 9


def test_repeat_interleave_select_crop_and_reset_match_dynamic_layer():
    ref, res = both(batch=2, length=3, extra=10)
    for c in (ref, res):
        c.batch_repeat_interleave(3)
    same(ref, res)
    step(ref, res, seed=1)
    idx = torch.tensor([0, 2, 5])
    for c in (ref, res):
        c.batch_select_indices(idx)
    same(ref, res)
    assert res.layers[0].key_buf.shape[0] == 3 and res.layers[0].capacity() == 13
    step(ref, res, seed=2)
    for c in (ref, res):
        c.crop(-2)
    same(ref, res)
    step(ref, res, seed=3, length=2)
    for c in (ref, res):
        c.reset()
    assert res.get_seq_length() == 0 and res.layers[0].key_buf is None
    step(ref, res, seed=4, batch=5, length=4)  # a fresh start, another batch size


def test_overflowing_the_capacity_grows_instead_of_failing():
    ref, res = both(length=2, extra=1)
    for t in range(5):
        step(ref, res, seed=t)
    assert res.layers[0].capacity() >= 7
    step(ref, res, seed=9, length=3)  # a multi-token update past the end too


def test_replaced_states_are_noticed_at_the_next_update():
    """Beam reordering (or anything) that swaps in new tensors: the next update re-reserves from them."""
    ref, res = both()
    order = torch.tensor([2, 0, 1])
    for c in (ref, res):
        c.reorder_cache(order)
    step(ref, res, seed=1)


def test_a_mismatched_batch_fails_as_dynamic_layer_does():
    ref, res = both()
    with pytest.raises(RuntimeError):
        ref.update(*states(1, 1, seed=0), 0)
    with pytest.raises(RuntimeError):
        res.update(*states(1, 1, seed=0), 0)


def test_other_caches_are_declined_and_left_untouched():
    class NoLayers:
        pass

    assert not reserve(NoLayers(), 4)
    cache = DynamicCache()
    cache.update(*states(B, 3, seed=0), 0)
    cache.layers.append(DynamicSlidingWindowLayer(sliding_window=4))
    cache.layers[1].update(*states(B, 3, seed=1))
    before = [(layer, layer.keys, layer.values) for layer in cache.layers]
    assert not reserve(cache, 4)
    after = [(layer, layer.keys, layer.values) for layer in cache.layers]
    assert len(after) == 2 and all(x is y for a, b in zip(before, after) for x, y in zip(a, b))
    assert type(cache.layers[0]) is DynamicLayer

    _, res = both()
    reserved = list(res.layers)
    assert not reserve(res, 4)  # already reserved
    assert all(a is b for a, b in zip(res.layers, reserved))


# --- the native sampler ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module", params=["mha", "gqa"])
def model(request):
    m = build_tiny_model(seed=3, **({"num_key_value_heads": 2} if request.param == "gqa" else {})).eval()
    with torch.no_grad():  # spread out but not uniform: some tokens are clearly likelier than others
        m.lm_head.weight.mul_(3.0)
    return m


TEXTS = ["1+2=", "13+24=", "7=", "40+41+4=", "2*3="]  # different lengths: left padding matters
N, NEW = 3, 16


def run(model, prompts, eos_id: int, **kw):
    g = torch.Generator().manual_seed(7)
    return sample(model, prompts, N, NEW, eos_id=eos_id, pad_id=PAD_ID, generator=g, **kw)


def likely_token(model, prompts) -> int:
    """The token first sampled after step 2 in the most rows when nothing stops them: as EOS, it ends rows at
    several different steps, and the others run on."""
    tokens, _, _ = run(model, prompts, eos_id=-1)
    has = tokens[:, :, None] == torch.arange(model.config.vocab_size)
    late = has[:, 2:].any(1) & ~has[:, :2].any(1)
    return int(late.sum(0).argmax())


def test_sampler_matches_the_dynamic_cache_with_rows_leaving_the_batch(model, tok, monkeypatch):
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    eos = likely_token(model, prompts)
    selects = []
    real_select = ReservedLayer.batch_select_indices
    monkeypatch.setattr(
        ReservedLayer, "batch_select_indices", lambda self, idx: (selects.append(len(idx)), real_select(self, idx))
    )
    fast = run(model, prompts, eos, compact_fraction=0.1)
    assert len(selects) >= 2, "rows left the batch fewer than twice: batch_select_indices is barely exercised"
    ended = fast[2] < NEW
    assert ended.sum() >= 3 and not ended.all()  # rows ended at different steps while others ran on
    with monkeypatch.context() as m:
        m.setattr(kv_reserve, "reserve", lambda cache, extra: False)
        slow = run(model, prompts, eos, compact_fraction=0.1)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[2], slow[2])
    torch.testing.assert_close(fast[1], slow[1], rtol=0, atol=1e-6)


def test_the_sampler_decodes_into_the_reserved_buffers(model, tok):
    """Every decoding step gets a reserved cache whose buffers are only reallocated when rows leave the batch: if
    the sampler stopped reserving, or the buffers started growing per token, this fails."""
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    eos, seen = likely_token(model, prompts), []

    def hook(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:  # decoding steps (the prefill builds its cache)
            buf = getattr(cache.layers[0], "key_buf", None)
            ptr = None if buf is None else buf.data_ptr()
            seen.append(([type(x) for x in cache.layers], ptr, cache.layers[0].keys.shape[0]))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _, _, lengths = run(model, prompts, eos_id=eos, compact_fraction=0.1)
    finally:
        handle.remove()
    assert len(seen) == int(lengths.max()) - 1  # one forward per decoded token after the first
    assert all(kinds == [ReservedLayer] * model.config.num_hidden_layers for kinds, _, _ in seen)
    batches = [rows for _, _, rows in seen]
    assert batches[0] == N * len(TEXTS) and batches[-1] < batches[0]  # rows left the batch
    for (_, p0, b0), (_, p1, b1) in zip(seen, seen[1:]):
        assert (p0 != p1) == (b0 != b1)  # a new buffer only when rows left the batch, never to grow
