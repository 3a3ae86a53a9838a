"""Batching and completion log-probs: the LM head runs on completion positions only, and the results equal a
plain full forward pass sliced by hand."""

import torch

from rlkit.models.forward import collate, completion_logits, entropy_from_logits, token_logprobs


def test_completion_logits_match_full_forward_slice():
    from rlkit.models.tiny import build_tiny_model

    model = build_tiny_model(seed=3).eval()
    prompts = [[10, 11, 12, 13], [14, 15], [16]]
    comps = [[20, 21, 22], [23], [24, 25, 26, 27, 28]]
    batch = collate(prompts, comps, pad_id=0)
    with torch.no_grad():
        got = completion_logits(model, batch, temperature=0.7)
        full = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
    P, T = batch["prompt_len"], batch["completion_ids"].shape[1]
    assert got.shape == (3, T, model.config.vocab_size)
    torch.testing.assert_close(got, full[:, P - 1 : P + T - 1] / 0.7, rtol=1e-5, atol=1e-5)
    # and the log-prob of each completion token by hand
    lp = token_logprobs(got, batch["completion_ids"])
    for i, c in enumerate(comps):
        for t, tok in enumerate(c):
            expect = torch.log_softmax(full[i, P - 1 + t] / 0.7, -1)[tok]
            assert abs(lp[i, t].item() - expect.item()) < 1e-5


def test_entropy_chunked_equals_textbook():
    logits = torch.randn(3, 5, 17) * 2
    p = torch.softmax(logits.double(), -1)
    expect = -(p * p.log()).sum(-1)
    for chunk in (1, 4, 1000):
        torch.testing.assert_close(entropy_from_logits(logits, chunk_rows=chunk).double(), expect, rtol=1e-5, atol=1e-6)


def test_collate_layout_left_padded_prompts_right_padded_completions():
    """The layout every forward relies on, written out by hand: prompts left-padded to P, completions right-padded
    to T, positions counting real tokens only; lists, tuples and tensors give the same batch."""
    prompts = [[10, 11, 12], (13,), torch.tensor([14, 15])]
    comps = [[20], [21, 22, 23], torch.tensor([], dtype=torch.long)]
    b = collate(prompts, comps, pad_id=0)
    assert b["prompt_len"] == 3
    assert b["input_ids"].tolist() == [[10, 11, 12, 20, 0, 0], [0, 0, 13, 21, 22, 23], [0, 14, 15, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 3, 3], [0, 0, 0, 1, 2, 3], [0, 0, 1, 1, 1, 1]]
    assert b["completion_ids"].tolist() == [[20, 0, 0], [21, 22, 23], [0, 0, 0]]
    assert b["completion_mask"].tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert b["input_ids"].dtype == torch.long and b["completion_mask"].dtype == torch.float32
    # every completion empty: one padded column, so the forward still has a position to predict from
    empty = collate([[5, 6]], [[]], pad_id=0)
    assert empty["input_ids"].tolist() == [[5, 6, 0]] and empty["completion_mask"].tolist() == [[0.0]]
