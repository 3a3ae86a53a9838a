"""The built-in task, the real datasets / from_pretrained loading paths on local files, the tiny model."""

import json

import pytest
import torch

from rlkit.data import load_prompt_dataset, make_arithmetic_splits, make_sft_dataset
from rlkit.models import build_tiny_model, build_tiny_tokenizer, load_model_and_tokenizer, save_tiny


def test_arithmetic_splits_are_disjoint_deterministic_and_correct():
    train, held = make_arithmetic_splits(n_train=500, n_eval=100, seed=3, max_operand=20)
    assert len(train) == 500 and len(held) == 100
    assert not set(train["prompt"]) & set(held["prompt"])
    again, _ = make_arithmetic_splits(n_train=500, n_eval=100, seed=3, max_operand=20)
    assert again["prompt"] == train["prompt"]
    other, _ = make_arithmetic_splits(n_train=500, n_eval=100, seed=4, max_operand=20)
    assert other["prompt"] != train["prompt"]
    for row in list(train) + list(held):
        a, op, b = _parse(row["prompt"])
        assert int(row["answer"]) == (a + b if op == "+" else a - b)


def _parse(prompt):
    body = prompt.rstrip("=")
    op = "+" if "+" in body else "-"
    a, b = body.split(op)
    return int(a), op, int(b)


def test_sft_data_never_contains_held_out_prompts_and_noise_knob():
    _, held = make_arithmetic_splits(n_eval=150, seed=7, max_operand=15)
    sft = make_sft_dataset(n=2000, seed=1, split_seed=7, n_eval=150, max_operand=15)
    assert not set(sft["prompt"]) & set(held["prompt"])
    assert all(c.startswith("<answer>") and c.endswith("</answer>") for c in sft["completion"])
    noisy = make_sft_dataset(n=2000, seed=1, split_seed=7, n_eval=150, max_operand=15, label_noise=0.3)
    wrong = sum(
        1
        for p, c in zip(noisy["prompt"], noisy["completion"])
        if int(c[8:-9]) != (lambda a, o, b: a + b if o == "+" else a - b)(*_parse(p))
    )
    assert 0.25 < wrong / 2000 < 0.35


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "disk"])
def test_load_prompt_dataset_from_local_files(tmp_path, fmt):
    from datasets import Dataset

    rows = {"question": ["1+1=", "2+3="], "solution": ["2", "5"]}
    ds = Dataset.from_dict(rows)
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("\n".join(json.dumps({"question": q, "solution": s}) for q, s in zip(*rows.values())))
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        ds.to_parquet(str(path))
    else:
        path = tmp_path / "d"
        ds.save_to_disk(str(path))
    out = load_prompt_dataset(str(path), prompt_column="question", answer_column="solution")
    assert out["prompt"] == rows["question"] and out["answer"] == rows["solution"]


def test_load_errors_name_the_file_and_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"missing prompt column 'prompt' \(columns: question, answer\)"):
        load_prompt_dataset(str(path))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_prompt_dataset(str(tmp_path / "nope.jsonl"))


def test_tiny_tokenizer_round_trip():
    tok = build_tiny_tokenizer()
    for text in ["12+7=", "<answer>-19</answer>", "3*4=<answer>12</answer>"]:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok("<answer>19</answer>")["input_ids"]) == 4  # tags are single tokens


def test_tiny_model_shape_and_from_pretrained_round_trip(tmp_path):
    model = build_tiny_model(seed=0)
    assert model.config.hidden_size // model.config.num_attention_heads >= 32  # vLLM CPU attention
    assert 2e5 < sum(p.numel() for p in model.parameters()) < 3e6
    save_tiny(tmp_path / "m")
    loaded, tok = load_model_and_tokenizer(str(tmp_path / "m"))
    ids = torch.tensor([tok("12+7=")["input_ids"]])
    torch.testing.assert_close(loaded(ids).logits, build_tiny_model(seed=0)(ids).logits)
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_missing_model_path_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_model_and_tokenizer(str(tmp_path / "no-such-model"))


def test_generate_with_left_padding_matches_unpadded():
    from rlkit.rollout import SamplingParams, TransformersEngine

    model, tok = load_model_and_tokenizer("tiny")
    engine = TransformersEngine(model, tok)
    prompts = [tok(p)["input_ids"] for p in ["1+2=", "10+20=", "7-3="]]
    batched = engine.generate(prompts, SamplingParams(greedy=True, max_new_tokens=5))
    for p, c in zip(prompts, batched):
        single = engine.generate([p], SamplingParams(greedy=True, max_new_tokens=5))[0]
        assert single.token_ids == c.token_ids
