"""The native sampling loop (rlkit.rollout.sampler) against independent computations: transformers' ``generate``
(greedy, with EOS at different steps so rows leave the batch), a cache-free full forward per sequence (recorded
log-probs under temperature/top-k/top-p), a brute-force nucleus, and the empirical distribution of samples."""

import math

import pytest
import torch

from rlkit.models.tiny import EOS_ID, PAD_ID, build_tiny_model, build_tiny_tokenizer
from rlkit.rollout import SamplingParams, TransformersEngine
from rlkit.rollout.sampler import draw, invert_cdf, process_logits, sample, supports_native_sampling


def scaled_model(scale: float):
    m = build_tiny_model(seed=3).eval()
    with torch.no_grad():  # sharper than the init's near-uniform distribution (the head is tied to the embeddings)
        m.lm_head.weight.mul_(scale)
    return m


@pytest.fixture(scope="module")
def model():
    """Sharp: greedy paths have no near-ties."""
    return scaled_model(40.0)


@pytest.fixture(scope="module")
def soft():
    """Spread out: sampling draws many different tokens."""
    return scaled_model(3.0)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def prompts_of(tok, texts):
    return [tok(t)["input_ids"] for t in texts]


TEXTS = ["1+2=", "13+24=", "7=", "40+41+4=", "2*3="]  # different lengths: left padding matters


def brute_nucleus(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """One row, by the definitions: keep the k most likely, then the shortest most-likely prefix with mass >= p."""
    x = (logits.double() / temperature).tolist()
    order = sorted(range(len(x)), key=lambda i: -x[i])
    keep = set(order[:top_k] if top_k else order)
    z = sum(math.exp(x[i]) for i in keep)
    kept, mass = set(), 0.0
    for i in order:
        if i not in keep:
            continue
        if mass >= top_p:
            break
        kept.add(i)
        mass += math.exp(x[i]) / z
    return torch.tensor([x[i] if i in kept else float("-inf") for i in range(len(x))], dtype=torch.float64)


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 0.9), (1.3, 5, 1.0), (0.8, 12, 0.6), (1.0, 0, 0.05)]
)
def test_process_logits_matches_brute_force(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 40, generator=g) * 3
    got = process_logits(logits, temperature, top_k, top_p)
    for r in range(6):
        want = brute_nucleus(logits[r], temperature, top_k, top_p)
        assert torch.equal(torch.isinf(got[r]), torch.isinf(want))
        fin = torch.isfinite(want)
        torch.testing.assert_close(got[r][fin].double(), want[fin], rtol=1e-6, atol=1e-6)


def test_greedy_equals_generate_with_rows_ending_at_different_steps(model, tok):
    prompts = prompts_of(tok, TEXTS)
    first, _, _ = sample(model, prompts, 1, 10, eos_id=-1, pad_id=PAD_ID, greedy=True)
    eos = int(first[0, 3])  # a token row 0 emits at step 3: rows then stop at different steps
    toks, lps, lengths = sample(model, prompts, 1, 10, eos_id=eos, pad_id=PAD_ID, greedy=True, compact_fraction=0.0)
    assert lengths.tolist() != [10] * len(prompts) and lengths[0] <= 4, "the test needs rows that end early"
    P = max(map(len, prompts))
    ids = torch.tensor([[PAD_ID] * (P - len(p)) + p for p in prompts])
    attn = (torch.arange(P)[None] >= torch.tensor([P - len(p) for p in prompts])[:, None]).long()
    ref = model.generate(
        input_ids=ids,
        attention_mask=attn,
        do_sample=False,
        max_new_tokens=10,
        eos_token_id=eos,
        pad_token_id=PAD_ID,
        return_dict_in_generate=True,
        output_scores=True,
    )
    new = ref.sequences[:, P:]
    ref_lp = torch.log_softmax(torch.stack(ref.scores, 1).float(), -1).gather(-1, new[..., None]).squeeze(-1)
    for i in range(len(prompts)):
        n = int(lengths[i])
        row = new[i].tolist()
        assert n == (row.index(eos) + 1 if eos in row else len(row))
        assert toks[i, :n].tolist() == row[:n]
        assert (toks[i, n:] == PAD_ID).all() and (lps[i, n:] == 0).all()
        torch.testing.assert_close(lps[i, :n], ref_lp[i, :n], rtol=0, atol=1e-5)


def full_forward_logprobs(model, prompt, completion, temperature, top_k, top_p):
    """Log-prob of each completion token under the processed distribution, from one cache-free forward."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    proc = process_logits(logits, temperature, top_k, top_p)
    return torch.log_softmax(proc, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


@pytest.mark.parametrize(
    "temperature,top_k,top_p,compact", [(1.0, 0, 1.0, 0.25), (0.7, 8, 0.9, 0.0), (1.5, 0, 0.8, 1.0)]
)
def test_sampled_logprobs_match_a_cache_free_forward(soft, tok, temperature, top_k, top_p, compact):
    model, prompts = soft, prompts_of(tok, TEXTS)
    torch.manual_seed(5)
    eos = int(sample(model, prompts, 1, 3, eos_id=-1, pad_id=PAD_ID, greedy=True)[0][1, 1])
    toks, lps, lengths = sample(
        model,
        prompts,
        4,
        8,
        eos_id=eos,
        pad_id=PAD_ID,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        compact_fraction=compact,
    )
    assert toks.shape == (len(prompts) * 4, 8)
    assert (lengths < 8).any(), "some rows should end early (and, with compaction, leave the batch)"
    for r in range(len(prompts) * 4):
        n = int(lengths[r])
        comp = toks[r, :n].tolist()
        assert (eos in comp) == (n < 8) and (eos not in comp[:-1])
        want = full_forward_logprobs(model, prompts[r // 4], comp, temperature, top_k, top_p)
        assert torch.isfinite(lps[r, :n]).all(), "a sampled token must be in the kept set"
        torch.testing.assert_close(lps[r, :n], want, rtol=0, atol=2e-4)


def test_sample_frequencies_follow_the_processed_distribution(soft, tok):
    model = soft
    prompt = prompts_of(tok, ["12+3="])
    torch.manual_seed(0)
    n, T, k, p = 6000, 1.6, 0, 0.95
    toks, lps, _ = sample(model, prompt, n, 1, eos_id=EOS_ID, pad_id=PAD_ID, temperature=T, top_k=k, top_p=p)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(prompt)).logits[0, -1].float()
    probs = torch.softmax(process_logits(logits[None], T, k, p)[0], -1)
    counts = torch.bincount(toks[:, 0], minlength=probs.numel()).double()
    assert counts[probs == 0].sum() == 0, "a token outside the nucleus was sampled"
    # every token's count within 5 binomial standard deviations (+1 for the rare ones) of its expectation
    mean, sd = n * probs.double(), (n * probs.double() * (1 - probs.double())).sqrt()
    assert ((counts - mean).abs() <= 5 * sd + 1).all()
    assert (probs > 0).sum() > 3, "the test needs a spread-out distribution"
    torch.testing.assert_close(lps[:, 0], probs.log()[toks[:, 0]], rtol=0, atol=1e-5)


def test_inverse_cdf_draw_has_the_exact_token_distribution():
    """``draw`` against the exact probabilities: 200k draws per distribution, every count within 5 binomial
    standard deviations (+1) of its expectation; zero-probability tokens (``-inf``, also first and last) never."""
    inf = float("inf")
    rows = torch.tensor(
        [
            [-inf, 0.5, 0.25, 0.15, 0.1, -inf],  # masked ends
            [0.9999, 1e-4, -inf, -inf, -inf, -inf],  # near-degenerate
            [1 / 6] * 6,  # uniform
        ]
    )
    rows = torch.where(rows > 0, rows.log(), rows)  # the -inf stay; the rest become log-probs
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for logp in rows:
        toks = draw(logp.expand(n, -1), g)
        probs = logp.exp().double()
        counts = torch.bincount(toks, minlength=6).double()
        assert counts[probs == 0].sum() == 0, "a zero-probability token was drawn"
        mean, sd = n * probs, (n * probs * (1 - probs)).sqrt()
        assert ((counts - mean).abs() <= 5 * sd + 1).all(), (counts, mean)
    # seeded: the same generator state draws the same tokens
    a = draw(rows[0].expand(50, -1), torch.Generator().manual_seed(7))
    b = draw(rows[0].expand(50, -1), torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and len(set(a.tolist())) > 1


def test_inverse_cdf_edges_never_pick_a_zero_probability_token():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.8, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    at = lambda u: invert_cdf(probs, torch.full((2, 1), u, dtype=torch.float64)).tolist()  # noqa: E731
    assert at(0.0) == [1, 2]  # u = 0: the first token of positive probability, not token 0
    assert at(0.2 - 1e-12) == [1, 2] and at(0.2 + 1e-12) == [3, 2]  # the boundary between tokens 1 and 3
    assert at(1.0) == [3, 2]  # u * total = total (what rounding can give): the last positive token, not 4
    # unnormalised weights: the same draw as their normalised version
    assert invert_cdf(probs * 7, torch.tensor([[0.5], [0.5]], dtype=torch.float64)).tolist() == [3, 2]


def test_group_rows_share_their_prompt_and_are_independent(soft, tok):
    model = soft
    prompts = prompts_of(tok, TEXTS[:2])
    torch.manual_seed(2)
    toks, _, _ = sample(model, prompts, 16, 6, eos_id=EOS_ID, pad_id=PAD_ID, temperature=2.0)
    assert len({tuple(r) for r in toks[:16].tolist()}) > 1  # independent draws, not one draw repeated
    engine = TransformersEngine(model, build_tiny_tokenizer(), batch_size=5)  # 5 // 3 = 1 prompt per batch
    out = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=4, seed=0))
    assert [c.prompt_ids for c in out] == [prompts[0]] * 3 + [prompts[1]] * 3


def test_engine_samplers_agree_greedily_and_restore_training_mode(tok):
    m = build_tiny_model(seed=1).train()
    prompts = prompts_of(tok, TEXTS)
    params = SamplingParams(n=2, max_new_tokens=6, greedy=True)
    native = TransformersEngine(m, tok, batch_size=4).generate(prompts, params)
    gen = TransformersEngine(m, tok, batch_size=4, sampler="generate").generate(prompts, params)
    assert m.training
    assert [c.token_ids for c in native] == [c.token_ids for c in gen]
    assert [c.text for c in native] == [c.text for c in gen]
    assert [c.finished for c in native] == [c.finished for c in gen]
    for a, b in zip(native, gen):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=1e-5)


def test_unsupported_models_and_bad_input():
    class NoCache(torch.nn.Module):
        config = type("C", (), {"is_encoder_decoder": False})()

        def forward(self, input_ids, attention_mask=None):
            return input_ids

    assert "position_ids" in supports_native_sampling(NoCache())
    assert supports_native_sampling(build_tiny_model()) is None
    with pytest.raises(ValueError, match="rollout.sampler 'beam'"):
        TransformersEngine(build_tiny_model(), build_tiny_tokenizer(), sampler="beam")
    with pytest.raises(ValueError, match="at least one token"):
        sample(build_tiny_model(), [[5], []], 1, 2, eos_id=EOS_ID, pad_id=PAD_ID)
