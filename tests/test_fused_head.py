"""The fused lm_head path (``grpo.fused_head``, :mod:`rlkit.models.fused_head`): token log-probs and entropy from hidden
states + lm_head weight, checked against float64 textbook formulas and plain autograd on materialised logits; no
``[N, V]`` tensor forward or backward; the hidden states equal ``completion_logits``'s; and whole learner steps
with and without the option agree."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LargestOutput as _LargestOutput

from rlkit.models.fused_head import completion_hidden, fused_head_agrees, linear_token_logprobs
from rlkit.models.forward import collate, completion_logits, entropy_from_logits, token_logprobs
from rlkit.types import ReferenceOutput, TrainBatch

B, T, H, V = 3, 5, 8, 23


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread (restored after): on a small shared machine two threads are many times slower here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(seed=0, dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g, dtype=dtype) * 0.7).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_() if bias else None
    tokens = torch.randint(0, V, (B, T), generator=g)
    grad_out = torch.rand(B, T, generator=g, dtype=dtype) * 2 - 0.5  # non-uniform, some negative
    return h, w, b, tokens, grad_out


def textbook_logprobs(h, w, b, tokens, temperature):
    """log(exp(z_t) / sum_v exp(z_v)) straight from the definition, float64."""
    z = (h.double() @ w.double().T + (0 if b is None else b.double())) / temperature
    e = (z - z.max(-1, keepdim=True).values.detach()).exp()
    return (e / e.sum(-1, keepdim=True)).gather(-1, tokens.unsqueeze(-1)).squeeze(-1).log()


@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_values_and_gradients_match_textbook_autograd(chunk, bias, temperature):
    h, w, b, tokens, grad_out = make(bias=bias)
    inputs = [t for t in (h, w, b) if t is not None]
    got = linear_token_logprobs(h, w, tokens, b, temperature, chunk_size=chunk)
    want = textbook_logprobs(h, w, b, tokens, temperature)
    assert got.shape == (B, T) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g_got = torch.autograd.grad(got, inputs, grad_out)
    g_want = torch.autograd.grad(want, inputs, grad_out)
    for a, e in zip(g_got, g_want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_float32_matches_token_logprobs_on_materialised_logits(chunk):
    h, w, b, tokens, grad_out = make(dtype=torch.float32)
    got, ent = linear_token_logprobs(h, w, tokens, b, 0.7, chunk_size=chunk, with_entropy=True)
    logits = F.linear(h, w, b) / 0.7
    want = token_logprobs(logits, tokens)
    assert got.dtype == torch.float32 and ent.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent, entropy_from_logits(logits), rtol=1e-5, atol=1e-6)
    for a, e in zip(torch.autograd.grad(got, (h, w, b), grad_out), torch.autograd.grad(want, (h, w, b), grad_out)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_entropy_is_the_textbook_formula_and_has_no_gradient(chunk):
    h, w, b, tokens, _ = make()
    lp, ent = linear_token_logprobs(h, w, tokens, b, 0.8, chunk_size=chunk, with_entropy=True)
    p = torch.softmax((F.linear(h, w, b) / 0.8).detach(), -1)
    torch.testing.assert_close(ent.double(), -(p * p.log()).sum(-1), rtol=1e-6, atol=1e-6)
    assert ent.dtype == torch.float32 and not ent.requires_grad and lp.requires_grad
    (lp.sum() + ent.sum()).backward()  # the entropy output is not differentiable, and does not get in the way
    assert h.grad is not None


def test_gradcheck_and_bf16_dtypes():
    h, w, b, tokens, _ = make()
    small = tuple(t.detach().requires_grad_() for t in (h[:2, :3, :4], w[:7, :4], b[:7]))
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_token_logprobs(h, w, tokens[:2, :3] % 7, b, 0.9, chunk_size=4), small
    )
    hb, wb, bb = (t.detach().bfloat16().requires_grad_() for t in (h, w, b))
    lp = linear_token_logprobs(hb, wb, tokens, bb, chunk_size=4)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, token_logprobs(F.linear(hb, wb, bb).float(), tokens), rtol=0, atol=1e-4)
    lp.sum().backward()
    assert (hb.grad.dtype, wb.grad.dtype, bb.grad.dtype) == (torch.bfloat16,) * 3


def test_bad_arguments():
    h, w, b, tokens, _ = make()
    with pytest.raises(ValueError, match="tokens has shape"):
        linear_token_logprobs(h, w, tokens[:, :2], b)
    with pytest.raises(ValueError, match="do not match"):
        linear_token_logprobs(h, w.T, tokens, b)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_token_logprobs(h, w, tokens, b, chunk_size=0)


# ------------------------------------------------------------------------------------------------ memory
def test_no_vocab_sized_tensor_forward_or_backward():
    n, h_dim, vocab, chunk = 512, 16, 2000, 32
    g = torch.Generator().manual_seed(3)
    h = torch.randn(n, h_dim, generator=g, requires_grad=True)
    w = torch.randn(vocab, h_dim, generator=g, requires_grad=True)
    b = torch.randn(vocab, generator=g, requires_grad=True)
    tokens = torch.randint(0, vocab, (n,), generator=g)
    mode = _LargestOutput([h, w, b])
    with mode:
        lp, ent = linear_token_logprobs(h, w, tokens, b, 0.7, chunk_size=chunk, with_entropy=True)
        lp.backward(torch.rand(n))
    assert "aten.addmm_.default" in mode.ops  # the backward pass (grad of weight) ran under the mode
    assert chunk * vocab <= mode.largest < n * vocab
    naive = _LargestOutput([h, w, b])  # positive control: the detector sees the materialised version's [N, V]
    with naive:
        token_logprobs(F.linear(h, w, b) / 0.7, tokens).backward(torch.rand(n))
    assert naive.largest >= n * vocab


# ------------------------------------------------------------------------------------------------ the model side
def _batch(vocab=40, seed=0, rows=4):
    g = torch.Generator().manual_seed(seed)
    prompts = [
        torch.randint(5, vocab, (int(torch.randint(2, 6, (), generator=g)),), generator=g).tolist() for _ in range(rows)
    ]
    comps = [
        torch.randint(5, vocab, (int(torch.randint(1, 8, (), generator=g)),), generator=g).tolist() for _ in range(rows)
    ]
    return collate(prompts, comps, 0)


def test_completion_hidden_gives_completion_logits_with_tied_weights():
    from rlkit.models.tiny import build_tiny_model

    model, batch = build_tiny_model(0), _batch()
    assert model.config.tie_word_embeddings
    hidden, weight, bias = completion_hidden(model, batch)
    assert weight is model.get_input_embeddings().weight and bias is None  # tied: the embedding itself
    want = completion_logits(model, batch)
    assert hidden.shape == want.shape[:2] + (model.config.hidden_size,)
    torch.testing.assert_close(F.linear(hidden, weight, bias), want, rtol=0, atol=1e-6)
    # gradients reach the tied weight (from the head and the embedding) as through the logits
    ids, mask = batch["completion_ids"], batch["completion_mask"]
    (linear_token_logprobs(hidden, weight, ids, bias, 0.7) * mask).sum().backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    (token_logprobs(completion_logits(model, batch, 0.7), ids) * mask).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    assert fused["model.embed_tokens.weight"].abs().max() > 0
    assert fused_head_agrees(model, batch)


def test_completion_hidden_on_lora_and_unsupported_heads():
    from rlkit.models.lora import wrap_lora
    from rlkit.models.tiny import build_tiny_model

    batch = _batch()
    lora = wrap_lora(build_tiny_model(0), {"r": 4, "alpha": 8.0, "target_modules": "all-linear"})
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:  # non-zero adapters: the trunk must run them
                p.copy_(torch.randn(p.shape) * 0.1)
    hidden, weight, bias = completion_hidden(lora, batch)
    want = completion_logits(lora, batch)
    assert (want - completion_logits(build_tiny_model(0), batch)).abs().max() > 1e-3
    torch.testing.assert_close(F.linear(hidden, weight, bias), want, rtol=0, atol=1e-6)
    # lm_head wrapped by peft: not a plain Linear
    head_lora = wrap_lora(build_tiny_model(0), {"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "lm_head"]})
    assert completion_hidden(head_lora, batch) is None and not fused_head_agrees(head_lora, batch)
    # a logit transform named by the config (Gemma2-style softcapping, Cohere logit_scale)
    for name, value in (("final_logit_softcapping", 30.0), ("logit_scale", 0.0625)):
        model = build_tiny_model(0)
        setattr(model.config, name, value)
        assert completion_hidden(model, batch) is None
    # a hooked head, and an output transform the config does not name (caught by the one-row check)
    hooked = build_tiny_model(0)
    hooked.lm_head.register_forward_hook(lambda mod, args, out: out * 2)
    assert completion_hidden(hooked, batch) is None
    scaled = build_tiny_model(0)
    forward = scaled.forward
    scaled.forward = lambda *a, **k: type(forward(*a, **k))(logits=forward(*a, **k).logits * 0.5)
    assert completion_hidden(scaled, batch) is not None and not fused_head_agrees(scaled, batch)


# ------------------------------------------------------------------------------------------------ the learner
GRPO = {
    "learning_rate": 1e-4,
    "group_size": 4,
    "clip_low": 0.2,
    "clip_high": 0.28,
    "aggregation": "token-mean",
    "entropy_coef": 0.01,
}


def _data(step, vocab, with_ref_logits, rows=8, lengths=(3, 12)):
    g = torch.Generator().manual_seed(10 + step)
    lens = [int(torch.randint(*lengths, (), generator=g)) for _ in range(rows)]
    prompts = [
        p for p in (torch.randint(5, 40, (4,), generator=g).tolist() for _ in range(rows // 4)) for _ in range(4)
    ]
    comps = [torch.randint(5, 40, (n,), generator=g).tolist() for n in lens]
    scores = [float(i % 2) for i in range(rows)]
    ref = ReferenceOutput(logprobs=-torch.rand(rows, max(lens), generator=g) * 3)
    if with_ref_logits:  # already divided by the temperature, as the reference worker sends them
        ref.logits = torch.randn(rows, max(lens), vocab, generator=g) * 2
    return TrainBatch(
        step=step,
        prompt_ids=prompts,
        completion_ids=comps,
        scores=scores,
        correct=scores,
        rollout_logprobs=[(-torch.rand(n, generator=g)).tolist() for n in lens],
        refs={"initial": ref},
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rlkit.models.tiny import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2))


REGS = {
    "kl_k3": ["kl_k3"],
    "forward_kl": [{"name": "forward_kl", "mode": "exact", "reference": "initial"}],
    "kl_exact": ["kl_exact"],
    # sequence-level gradients through a real learner step: sampled (score-function terms / prefix weights)
    # and exact (future exact divergences / prefix weights on exact per-state divergences)
    "kl_seq": ["kl_seq", "forward_kl_seq"],
    "exact_seq": [
        {"name": "kl", "mode": "exact", "gradient": "sequence"},
        {"name": "forward_kl", "mode": "exact", "gradient": "sequence"},
    ],
}


@pytest.mark.parametrize("reg", list(REGS))
@pytest.mark.parametrize("updates", [{}, {"epochs": 2, "minibatches": 2}])
def test_learner_steps_agree_with_and_without_fused_head(tiny_dir, reg, updates, capsys):
    from rlkit.workers.learner import LearnerCore

    cores = {
        f: LearnerCore(tiny_dir, {**GRPO, **updates, "fused_head": f}, REGS[reg], temperature=0.8)
        for f in (False, True)
    }
    vocab = cores[True].model.config.vocab_size
    init = {n: p.detach().clone() for n, p in cores[True].model.named_parameters()}
    for step in range(2):
        data = _data(step, vocab, reg not in ("kl_k3", "kl_seq"))
        base, fused = (cores[f].train_step(copy.deepcopy(data)) for f in (False, True))
        assert sorted(base) == sorted(fused)
        for k in base:
            assert fused[k] == pytest.approx(base[k], rel=1e-5, abs=1e-6), k
    assert cores[True]._fused_ok and "falls back" not in capsys.readouterr().out
    label = {
        "kl_k3": "kl_k3",
        "forward_kl": "forward_kl_exact",
        "kl_exact": "kl_exact",
        "kl_seq": "kl_k3_seq",
        "exact_seq": "kl_exact_seq",
    }[reg]
    assert base[f"{label}/value"] > 0 and base["policy/entropy"] > 0
    if reg in ("kl_seq", "exact_seq"):  # the forward KL's prefix importance weights are reported
        fkl = "forward_kl_seq" if reg == "kl_seq" else "forward_kl_exact_seq"
        assert base[f"{fkl}/weight_max"] > 1.0 and math.isfinite(base[f"{fkl}/seq_value"])
    _assert_same_weights(cores[False].model, cores[True].model, init)


def _assert_same_weights(base, fused, init):
    """The updated weights agree to 2e-5 (lr 1e-4: AdamW moves an entry by ~lr whatever its gradient's size, so
    float noise in near-zero gradients shows up at a fraction of lr: up to 0.13 lr measured on a CPU with AMX, where
    the matmul kernels sum in another order), and the steps did move them by more than 5x that."""
    params = dict(base.named_parameters())
    moved = max(float((params[n].detach() - p).abs().max()) for n, p in init.items())
    assert moved > 1e-4
    for n, p in fused.named_parameters():
        diff = float((p.detach() - params[n].detach()).abs().max())
        assert diff <= 2e-5, (n, diff)


def test_lora_and_ppo_learners_agree_with_and_without_fused_head(tiny_dir):
    """LoRA: the "initial" reference (adapters disabled) also comes from the fused head; PPO: the value head reads
    the trunk output that the fused head's forward produced (its forward hook)."""
    from rlkit.config import PPOConfig
    from rlkit.workers.learner import LearnerCore
    from rlkit.workers.ppo_learner import PPOLearnerCore

    lora = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"}
    ppo = PPOConfig(learning_rate=1e-4, critic_learning_rate=1e-3).model_dump()
    makers = {
        "lora": lambda f: LearnerCore(tiny_dir, {**GRPO, "fused_head": f}, ["kl_k3"], lora=dict(lora)),
        "ppo": lambda f: PPOLearnerCore(tiny_dir, {**ppo, "fused_head": f}, ["kl_reward", "kl_k3"]),
    }
    for kind, make_core in makers.items():
        cores = {f: make_core(f) for f in (False, True)}
        init = {n: p.detach().clone() for n, p in cores[True].model.named_parameters()}
        for step in range(2):
            data = _data(step, cores[True].model.config.vocab_size, False)
            base, fused = (cores[f].train_step(copy.deepcopy(data)) for f in (False, True))
            assert sorted(base) == sorted(fused) and cores[True]._fused_ok, kind
            for k in base:
                assert fused[k] == pytest.approx(base[k], rel=1e-5, abs=1e-6), (kind, k)
        _assert_same_weights(cores[False].model, cores[True].model, init)
        if kind == "ppo":
            for a, b in zip(cores[False].critic.parameters(), cores[True].critic.parameters()):
                assert float((a - b).detach().abs().max()) <= 1e-5


def test_learner_with_lp_reg_falls_back_and_says_why(tiny_dir, capsys):
    from rlkit.workers.learner import LearnerCore

    core = LearnerCore(tiny_dir, {**GRPO, "fused_head": True}, ["lp_reg"])
    core.train_step(_data(0, core.model.config.vocab_size, False))
    assert core._fused_ok is False and "lp_reg" in capsys.readouterr().out


def test_fused_learner_never_materialises_batch_logits(tmp_path):
    """A vocabulary larger than every activation: no op output of a whole fused train step (forward, backward,
    exact forward KL, optimizer) reaches B x T x V elements; the logits learner's does (positive control)."""
    from rlkit.models.tiny import save_tiny
    from rlkit.workers.learner import LearnerCore

    path = str(
        save_tiny(
            tmp_path,
            vocab_size=6000,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    largest = {}
    for fused in (True, False):
        core = LearnerCore(path, {**GRPO, "fused_head": fused}, REGS["forward_kl"])
        data = _data(0, 6000, True, rows=16, lengths=(20, 41))  # B x T > the chunk (256 positions)
        n_bt = len(data.completion_ids) * max(len(c) for c in data.completion_ids)
        mode = _LargestOutput([data.refs["initial"].logits])
        with mode:
            core.train_step(data)
        largest[fused] = mode.largest
    assert largest[True] < n_bt * 6000 <= largest[False], (largest, n_bt * 6000)


def test_learner_fused_head_is_automatic_by_default(tiny_dir, capsys):
    """``grpo.fused_head`` unset: on for a plain linear head; off without a word where lp_reg needs full logits
    (``true`` says why: the test above)."""
    from rlkit.workers.learner import LearnerCore

    core = LearnerCore(tiny_dir, dict(GRPO), ["kl_k3"])
    core.train_step(_data(0, core.model.config.vocab_size, False))
    assert core.cfg.fused_head is None and core._fused_ok is True
    core = LearnerCore(tiny_dir, dict(GRPO), ["lp_reg"])
    core.train_step(_data(0, core.model.config.vocab_size, False))
    assert core._fused_ok is False and "falls back" not in capsys.readouterr().out
    core = LearnerCore(tiny_dir, {**GRPO, "fused_head": False}, ["kl_k3"])
    core.train_step(_data(0, core.model.config.vocab_size, False))
    assert core._fused_ok is None  # never checked: off


def _wide_vocab_dir(tmp_path):
    from rlkit.models.tiny import save_tiny

    return str(
        save_tiny(
            tmp_path, vocab_size=6000, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2,
        )
    )  # fmt: skip


def test_reference_logprobs_never_materialise_batch_logits(tmp_path):
    """A reference asked for log-probs only computes them from its hidden states chunk by chunk: no op output
    reaches B x T x V, where asking for logits does (positive control); the log-probs are the same."""
    from rlkit.workers.local import actor_class
    from rlkit.workers.reference import ReferenceWorker

    ref = actor_class(ReferenceWorker)("initial", [_wide_vocab_dir(tmp_path)], temperature=0.7)
    data = _data(0, 6000, False, rows=16, lengths=(20, 41))  # B x T > the chunk (256 positions)
    n_btv = len(data.completion_ids) * max(len(c) for c in data.completion_ids) * 6000
    outs, largest = {}, {}
    for want_logits in (False, True):
        with _LargestOutput([]) as mode:
            outs[want_logits] = ref.compute(data.prompt_ids, data.completion_ids, want_logits=want_logits)
        largest[want_logits] = mode.largest
    assert largest[False] < n_btv <= largest[True], (largest, n_btv)
    assert "logits" not in outs[False]
    torch.testing.assert_close(outs[False]["logprobs"], outs[True]["logprobs"], rtol=0, atol=2e-5)


def test_reference_with_an_unnamed_logit_transform_uses_its_logits(tmp_path, capsys):
    """A reference whose logits are not ``F.linear(hidden, lm_head)`` (a transform no config field names) is caught
    by the one-row check at its first batch: log-probs come from its own logits, silently; a request for hidden
    states gets logits, and it says so once."""
    from rlkit.models.forward import collate, completion_logits, token_logprobs
    from rlkit.workers.local import actor_class
    from rlkit.workers.reference import ReferenceWorker

    ref = actor_class(ReferenceWorker)("initial", [_wide_vocab_dir(tmp_path)])
    forward = ref.model.forward
    ref.model.forward = lambda *a, **k: type(forward(*a, **k))(logits=forward(*a, **k).logits * 0.5)
    data = _data(0, 6000, False)
    got = ref.compute(data.prompt_ids, data.completion_ids)["logprobs"]
    batch = collate(data.prompt_ids, data.completion_ids, ref.pad_id)
    with torch.no_grad():
        want = token_logprobs(completion_logits(ref.model, batch), batch["completion_ids"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert ref._hidden_ok is False and "not F.linear" not in capsys.readouterr().out  # nothing was asked for
    # asked for hidden states, it sends logits instead, and says so once
    for _ in range(2):
        out = ref.compute(data.prompt_ids, data.completion_ids, hidden=True)
        assert "hidden" not in out and out["logits"].shape[-1] == 6000
    assert capsys.readouterr().out.count("sending logits") == 1


def test_one_row_check_under_bf16_mixed():
    """bf16-mixed (float32 weights, bfloat16 autocast): the model's own head rounds in bfloat16 while the check's
    ``F.linear`` is float32, so the check takes bfloat16's tolerance; a real transform is still caught."""
    from rlkit.models.forward import collate
    from rlkit.models.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer("tiny", dtype="bf16-mixed")
    batch = collate([[5, 6, 7]] * 4, [[8, 9, 10, 11, 12]] * 4, 0)
    assert fused_head_agrees(model, batch)
    forward = model.forward
    model.forward = lambda *a, **k: type(forward(*a, **k))(logits=forward(*a, **k).logits * 0.5)
    assert not fused_head_agrees(model, batch)
