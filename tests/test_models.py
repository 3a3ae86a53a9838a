"""The tiny model and tokenizer, and the real ``from_pretrained`` loading path on a local directory."""

import json

import pytest
import torch

from rlkit.models import build_tiny_model, build_tiny_tokenizer, load_model_and_tokenizer, save_tiny

TEXTS = ["12+7=", "0-25=", "3*4=", "<answer>19</answer>", "<answer>-19</answer>", "30-7=<answer>23</answer>"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_tokenizer_round_trip_and_compact_sequences():
    tok = build_tiny_tokenizer()
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids
    # one token per character, tags are single tokens, nothing added (no BOS/EOS)
    assert len(tok("12+7=")["input_ids"]) == 5
    ids = tok("<answer>19</answer>")["input_ids"]
    assert len(ids) == 4 and tok.convert_ids_to_tokens(ids) == ["<answer>", "1", "9", "</answer>"]
    assert len(set(tok.convert_tokens_to_ids(list("0123456789+-*=")))) == 14


def test_tokenizer_special_tokens():
    tok = build_tiny_tokenizer()
    assert {tok.pad_token, tok.eos_token, tok.bos_token} == {"<pad>", "<eos>", "<bos>"}
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id}) == 4
    # TRL appends the eos token as *text* to SFT completions: it must encode to the single eos id
    ids = tok("<answer>5</answer>" + tok.eos_token)["input_ids"]
    assert ids[-1] == tok.eos_token_id and len(ids) == 4
    # skipping special tokens drops pad/eos but keeps the answer markup (the reward needs it)
    text = tok.decode([tok.pad_token_id] + ids, skip_special_tokens=True)
    assert text == "<answer>5</answer>"
    assert tok.decode(tok("AB#")["input_ids"]) == "<unk><unk><unk>"  # out-of-vocabulary characters


def test_tokenizer_padding_sides():
    tok = build_tiny_tokenizer()
    right = tok(["1+2=", "10+20="], padding=True)["input_ids"]
    assert right[0][-2:] == [tok.pad_token_id] * 2 and tok.pad_token_id not in right[1]
    tok.padding_side = "left"
    left = tok(["1+2=", "10+20="], padding=True)
    assert left["input_ids"][0][:2] == [tok.pad_token_id] * 2 and left["attention_mask"][0][:3] == [0, 0, 1]


def test_tiny_model_shape_and_size():
    model = build_tiny_model(seed=0)
    cfg = model.config
    assert cfg.hidden_size == 128 and cfg.num_attention_heads == 4
    assert cfg.hidden_size // cfg.num_attention_heads >= 32 and getattr(cfg, "head_dim", 32) >= 32
    assert cfg.vocab_size == len(build_tiny_tokenizer())
    n = sum(p.numel() for p in model.parameters())
    assert 5e5 <= n <= 2e6, n
    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_model(num_attention_heads=8)  # 128 / 8 = 16 < 32


def test_tiny_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_model(seed=0)
    after = torch.rand(3)
    assert torch.equal(before, after)
    b, c = build_tiny_model(seed=0), build_tiny_model(seed=1)
    ids = torch.tensor([[7, 8, 16, 13, 20]])
    assert torch.equal(a(ids).logits, b(ids).logits)
    assert not torch.allclose(a(ids).logits, c(ids).logits)


def test_save_and_from_pretrained_round_trip(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_dir / "model.safetensors").is_file()
    assert not list(tiny_dir.glob("*.bin"))
    assert json.loads((tiny_dir / "config.json").read_text())["num_attention_heads"] == 4
    tok, ref_tok = AutoTokenizer.from_pretrained(tiny_dir), build_tiny_tokenizer()
    for text in TEXTS + ["<answer>7</answer><eos>"]:
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    assert (tok.pad_token_id, tok.eos_token_id) == (ref_tok.pad_token_id, ref_tok.eos_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ids = torch.tensor([ref_tok(t)["input_ids"] for t in ["12+7=", "30-4="]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, build_tiny_model(seed=0)(ids).logits, rtol=0, atol=0)


def test_load_model_and_tokenizer_local_dir_and_tiny(tiny_dir):
    model, tok = load_model_and_tokenizer(str(tiny_dir))
    tiny_model, tiny_tok = load_model_and_tokenizer("tiny", seed=0)
    assert tok.padding_side == "left" and tiny_tok.padding_side == "left"
    assert tok.pad_token_id == tiny_tok.pad_token_id and tok.pad_token_id is not None
    ids = torch.tensor([tok("5+5=")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_model(ids).logits, rtol=0, atol=0)
    other, _ = load_model_and_tokenizer("rlkit/tiny", seed=3)
    with torch.no_grad():
        assert not torch.allclose(other(ids).logits, tiny_model(ids).logits)
    half, _ = load_model_and_tokenizer(str(tiny_dir), dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_model_and_tokenizer("tiny", dtype="float64")


def test_pad_token_falls_back_to_eos(tmp_path):
    tok = build_tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    build_tiny_model(seed=0, pad_token_id=None).save_pretrained(tmp_path / "nopad")
    model, loaded = load_model_and_tokenizer(str(tmp_path / "nopad"))
    assert loaded.pad_token == "<eos>" and loaded.pad_token_id == loaded.eos_token_id
    assert model.config.pad_token_id == loaded.eos_token_id == model.generation_config.pad_token_id


def test_missing_model_path_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_model_and_tokenizer(str(missing))
    with pytest.raises(FileNotFoundError, match="rlkit-test/definitely-not-cached"):
        load_model_and_tokenizer("rlkit-test/definitely-not-cached")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model_and_tokenizer(str(tmp_path / "empty"))


def test_generate_with_left_padding_matches_unpadded(tiny_dir):
    model, tok = load_model_and_tokenizer(str(tiny_dir))
    with torch.no_grad():  # sharpen the random model so greedy choices are not near-ties
        model.model.embed_tokens.weight.mul_(8.0)
    prompts = ["1+2=", "10+20=", "7-3="]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0].item() == tok.pad_token_id  # left padded
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        out = model.generate(**batch, **kw)
    width = batch["input_ids"].shape[1]
    assert out.shape[0] == 3 and out.shape[1] > width
    for i, p in enumerate(prompts):
        single = tok(p, return_tensors="pt")
        with torch.no_grad():
            alone = model.generate(**single, **kw)[0, single["input_ids"].shape[1] :].tolist()
        batched = out[i, width:].tolist()[: len(alone)]
        assert batched == alone, (p, batched, alone)
