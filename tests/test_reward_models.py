"""Tests for the reward_models package: rule-based rewards, registry, composite and a real tiny reward model."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

import reward_models
from reward_models import (
    CompositeReward,
    ExactAnswer,
    FormatReward,
    LengthPenalty,
    ModelScorer,
    NumericMatch,
    Reward,
    SampleReward,
    UnknownRewardError,
    available_rewards,
    build_reward,
    get_reward,
    parse_number,
    register_reward,
    strip_eos,
)
from reward_models import registry

ROOT = Path(__file__).resolve().parents[1]


def score1(reward, completion, answer=None, prompt="What is 6*7?"):
    return reward([prompt], [completion], [answer])[0]


# ----------------------------------------------------------------------------------------------------- registry


def test_builtin_rewards_are_registered():
    names = available_rewards()
    for name in ("exact_answer", "numeric_match", "format", "length_penalty", "model_scorer"):
        assert name in names
    assert get_reward("numeric_match") is NumericMatch
    assert get_reward("format") is FormatReward
    assert NumericMatch.name == "numeric_match"


def test_unknown_reward_error_names_bad_and_available():
    with pytest.raises(KeyError) as info:
        get_reward("nope_reward")
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, UnknownRewardError)
    assert "'nope_reward'" in msg and "numeric_match" in msg and "exact_answer" in msg


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_register_custom_reward(scratch_registry):
    @register_reward("const_test")
    class Const(SampleReward):
        def __init__(self, value: float = 1.0):
            self.value = value

        def score(self, prompt, completion, answer):
            return self.value

    assert "const_test" in available_rewards()
    assert get_reward("const_test") is Const and Const.name == "const_test"
    assert build_reward("const_test", value=2.5)(["a", "b"], ["x", "y"]) == [2.5, 2.5]
    with pytest.raises(ValueError, match="unknown parameter.*'valu'"):
        build_reward("const_test", valu=3)

    class Other(SampleReward):
        def score(self, prompt, completion, answer):
            return 0.0

    with pytest.raises(ValueError, match="already registered"):
        register_reward("const_test")(Other)
    with pytest.raises(TypeError):
        register_reward("not_a_reward")(object)


def test_batch_validation():
    reward = NumericMatch()
    with pytest.raises(ValueError, match=r"len\(prompts\)=2.*len\(completions\)=1.*len\(answers\)=2"):
        reward(["a", "b"], ["1"], ["1", "2"])
    with pytest.raises(ValueError, match=r"len\(answers\)=1"):
        reward(["a", "b"], ["1", "2"], ["1"])
    with pytest.raises(TypeError, match="single string"):
        reward("a", "1", "1")
    assert reward([], [], []) == []
    assert reward(["p"], ["<answer>1</answer>"]) == [0.0]  # answers omitted -> no reference


def test_importing_package_does_not_import_torch():
    code = (
        "import sys, reward_models as r\n"
        "r.available_rewards()\n"
        "assert r.build_reward('numeric_match')(['p'], ['<answer>1</answer>'], ['1']) == [1.0]\n"
        "r.ModelScorer(path='unused')\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", Fraction(42)),
        ("-3", Fraction(-3)),
        ("\u22127", Fraction(-7)),
        ("+5", Fraction(5)),
        ("1,000", Fraction(1000)),
        ("-1,234,567.5", Fraction(-2469135, 2)),
        ("0.25", Fraction(1, 4)),
        (".5", Fraction(1, 2)),
        ("1e3", Fraction(1000)),
        ("3/4", Fraction(3, 4)),
        ("-6 / 8", Fraction(-3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac34", Fraction(3, 4)),
        ("-\\frac{1}{2}", Fraction(-1, 2)),
        ("\\frac{-3}{4}", Fraction(-3, 4)),
        ("\\boxed{\\frac{3}{4}}", Fraction(3, 4)),
        ("$1{,}000$", Fraction(1000)),
        ("42.", Fraction(42)),
        ("1/0", None),
        ("\\frac{1}{0}", None),
        ("\\boxed{1} + 2", None),
        ("1,00", None),
        ("abc", None),
        ("", None),
        ("inf", None),
        (None, None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_strip_eos():
    assert strip_eos("<answer>42</answer><|endoftext|>") == "<answer>42</answer>"
    assert strip_eos("42</s><pad><pad>  \n") == "42"
    assert strip_eos("a</s>b") == "a</s>b"
    assert strip_eos("") == ""


# ------------------------------------------------------------------------------------------------ exact_answer


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("<answer>42</answer>", "42", 1.0),
        ("<answer>42</answer><|endoftext|>", "42", 1.0),
        ("<answer> 42 </answer></s>", " 42\n", 1.0),
        ("<answer>  New   York\n</answer>", "New York", 1.0),
        ("<answer>43</answer>", "42", 0.0),
        ("<answer>Paris</answer>", "paris", 0.0),  # case-sensitive by default
        ("<answer>1</answer><answer>2</answer>", "2", 1.0),  # last tag wins
        ("<answer>1</answer><answer>2</answer>", "1", 0.0),
        ("I think it is 40 plus 2, so 42", "42", 1.0),  # no tag: last number-ish token
        ("Let me think.\nParis", "Paris", 1.0),  # no tag, no number: last line
        ("so \\boxed{x+1}", "x+1", 1.0),  # no tag: last \boxed{}
        ("<answer>0.5</answer>", "1/2", 0.0),  # exact string, not numeric
        ("", "42", 0.0),
        ("<answer>42</answer>", None, 0.0),
    ],
)
def test_exact_answer(completion, answer, expected):
    assert score1(ExactAnswer(), completion, answer) == expected


def test_exact_answer_options():
    assert score1(ExactAnswer(ignore_case=True), "<answer>PARIS</answer>", "paris") == 1.0
    first = ExactAnswer(multiple_tags="first")
    assert score1(first, "<answer>1</answer><answer>2</answer>", "1") == 1.0
    reject = ExactAnswer(multiple_tags="reject")
    assert score1(reject, "<answer>1</answer><answer>2</answer>", "2") == 0.0
    assert score1(reject, "<answer>2</answer>", "2") == 1.0
    tag_only = ExactAnswer(extract="tag")
    assert score1(tag_only, "the answer is 42", "42") == 0.0
    assert score1(ExactAnswer(extract="full"), "  42 <|im_end|>", "42") == 1.0
    assert score1(ExactAnswer(extract="last_line"), "42\nnot sure", "42") == 0.0
    pattern = ExactAnswer(answer_pattern=r"ANSWER:\s*(\w+)")
    assert score1(pattern, "ANSWER: cat ... ANSWER: dog", "dog") == 1.0
    assert score1(pattern, "<answer>dog</answer>", "dog") == 0.0
    with pytest.raises(ValueError, match="extract mode 'lastline'"):
        ExactAnswer(extract="lastline")
    with pytest.raises(ValueError, match="invalid answer pattern"):
        ExactAnswer(answer_pattern="(")


# ------------------------------------------------------------------------------------------------ numeric_match


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("<answer>42</answer>", "42", 1.0),
        ("<answer>42</answer><|endoftext|>", "42", 1.0),
        ("<answer>41</answer>", "42", 0.0),
        ("<answer>-7</answer>", "-7", 1.0),
        ("<answer>7</answer>", "-7", 0.0),
        ("<answer>\u22123</answer>", "-3", 1.0),
        ("<answer>3/4</answer>", "0.75", 1.0),
        ("<answer>\\frac{3}{4}</answer>", "3/4", 1.0),
        ("<answer>\\frac{3}{5}</answer>", "3/4", 0.0),
        ("The answer is \\boxed{\\frac{3}{4}}.", "0.75", 1.0),
        ("\\boxed{-\\dfrac{1}{2}}", "-0.5", 1.0),
        ("<answer>1,000</answer>", "1000", 1.0),
        ("<answer>$1,234.50$</answer>", "1234.5", 1.0),
        ("<answer>x = 12</answer>", "12", 1.0),
        ("<answer>0.1</answer>", "1/10", 1.0),
        ("<answer>42</answer>", "Natalia sold 42 clips. #### 42", 1.0),
        ("<answer>5</answer> though 6 is tempting", "5", 1.0),  # the tag beats later numbers
        ("<answer>5</answer> though 6 is tempting", "6", 0.0),
        ("first 5, then 6", "6", 1.0),  # no tag: last number
        ("<answer>abc</answer>", "1", 0.0),
        ("<answer></answer>", "0", 0.0),
        ("", "0", 0.0),
        ("<answer>1/0</answer>", "0", 0.0),
        ("<answer>42</answer>", "not a number", 0.0),
        ("<answer>42</answer>", None, 0.0),
    ],
)
def test_numeric_match(completion, answer, expected):
    assert score1(NumericMatch(), completion, answer) == expected


def test_numeric_match_tolerance():
    assert score1(NumericMatch(), "<answer>0.33333</answer>", "1/3") == 0.0
    assert score1(NumericMatch(), "<answer>0.3333333</answer>", "1/3") == 1.0
    assert score1(NumericMatch(rel_tol=1e-4), "<answer>0.33333</answer>", "1/3") == 1.0
    assert score1(NumericMatch(abs_tol=0.02), "<answer>3.01</answer>", "3") == 1.0
    assert score1(NumericMatch(abs_tol=0.001), "<answer>3.01</answer>", "3") == 0.0
    assert score1(NumericMatch(rel_tol=0.0), "<answer>0.30000000000000004</answer>", "0.3") == 0.0
    with pytest.raises(ValueError, match="rel_tol"):
        NumericMatch(rel_tol=-1)


def test_synthetic_arithmetic_batch():
    """rlkit's default synthetic task: small-integer arithmetic answered as <answer>N</answer> plus maybe EOS."""
    prompts = ["3+4=?", "10-12=?", "6*7=?", "9-9=?"]
    completions = [
        "<answer>7</answer><|endoftext|>",
        "<answer>-2</answer></s>",
        "<answer>41</answer>",
        "<answer>0</answer>",
    ]
    answers = ["7", "-2", "42", "0"]
    assert NumericMatch()(prompts, completions, answers) == [1.0, 1.0, 0.0, 1.0]
    assert ExactAnswer()(prompts, completions, answers) == [1.0, 1.0, 0.0, 1.0]
    assert FormatReward()(prompts, completions, answers) == [1.0, 1.0, 1.0, 1.0]
    assert LengthPenalty(max_length=18)(prompts, completions, answers) == pytest.approx([0.0, -1 / 18, -1 / 18, 0.0])


# ------------------------------------------------------------------------------------------------ format


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>42</answer>",
        "<answer>42</answer><|endoftext|>",
        "<answer>42</answer></s>\n",
        "<think>6*7</think>\n<answer>42</answer>\n",
    ],
)
def test_format_positive(completion):
    assert score1(FormatReward(), completion) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "42",
        "<answer></answer>",
        "<answer>  </answer>",
        "<answer>42",
        "</answer>42<answer>",
        "<answer>1</answer><answer>2</answer>",
        "<answer>42</answer> because six times seven",
        "<answer><answer>42</answer>",
    ],
)
def test_format_negative(completion):
    assert score1(FormatReward(), completion) == 0.0


def test_format_pattern():
    reward = FormatReward(pattern=r"<think>.+</think>\s*<answer>-?\d+</answer>")
    assert score1(reward, "<think>a\nb</think> <answer>-3</answer><|im_end|>") == 1.0
    assert score1(reward, "<answer>-3</answer>") == 0.0
    assert score1(reward, "<think>x</think><answer>3</answer> extra") == 0.0  # full match required
    with pytest.raises(ValueError, match="invalid format pattern"):
        FormatReward(pattern="[")


# ------------------------------------------------------------------------------------------------ length_penalty


def test_length_penalty_chars():
    reward = LengthPenalty(max_length=10, scale=20)
    texts = ["", "a" * 10, "a" * 15, "a" * 30, "a" * 100, "a" * 10 + "<|endoftext|>"]
    assert reward(["p"] * len(texts), texts) == pytest.approx([0.0, 0.0, -0.25, -1.0, -1.0, 0.0])
    assert LengthPenalty(max_length=4)(["p"], ["abcdef"]) == [pytest.approx(-0.5)]  # scale defaults to max_length


def test_length_penalty_words_and_errors():
    reward = LengthPenalty(max_length=3, unit="words", scale=2)
    assert reward(["p", "p", "p"], ["a b c", "a  b\nc d", "a b c d e f g"]) == [0.0, -0.5, -1.0]
    with pytest.raises(ValueError, match="unit 'lines'"):
        LengthPenalty(unit="lines")
    with pytest.raises(ValueError, match="scale"):
        LengthPenalty(max_length=0)
    with pytest.raises(ValueError, match="max_length"):
        LengthPenalty(max_length=-1)


# ------------------------------------------------------------------------------------------------ composite


def test_composite_weights_and_breakdown():
    comp = CompositeReward(
        [
            {"name": "numeric_match", "weight": 1.0},
            {"name": "format", "weight": 0.5},
            {"name": "length_penalty", "weight": 2, "params": {"max_length": 20, "scale": 10}},
        ]
    )
    completions = ["<answer>42</answer>", "<answer>41</answer> and more", "42"]
    result = comp.compute(["q"] * 3, completions, ["42"] * 3)
    assert result.components == {
        "numeric_match": [1.0, 0.0, 1.0],
        "format": [1.0, 0.0, 0.0],
        "length_penalty": [0.0, pytest.approx(-0.8), 0.0],
    }
    assert result.totals == pytest.approx([1.5, -1.6, 1.0])
    assert result.weights == {"numeric_match": 1.0, "format": 0.5, "length_penalty": 2.0}
    assert comp(["q"] * 3, completions, ["42"] * 3) == pytest.approx([1.5, -1.6, 1.0])
    metrics = result.metrics()
    assert metrics["reward/total"] == pytest.approx((1.5 - 1.6 + 1.0) / 3)
    assert metrics["reward/numeric_match"] == pytest.approx(2 / 3)
    assert metrics["reward/length_penalty"] == pytest.approx(-0.8 / 3)


def test_composite_shorthand_keys_and_zero_weight():
    comp = CompositeReward(
        [
            "format",
            {"name": "numeric_match", "key": "strict"},
            {"name": "numeric_match", "key": "loose", "weight": 0, "params": {"abs_tol": 0.5}},
        ]
    )
    result = comp.compute(["q"], ["<answer>2.2</answer>"], ["2"])
    assert result.components == {"format": [1.0], "strict": [0.0], "loose": [1.0]}
    assert result.totals == [1.0]  # loose is logged but has weight 0


def test_composite_forwards_kwargs(scratch_registry):
    @register_reward("step_echo")
    class StepEcho(Reward):
        def score_batch(self, prompts, completions, answers, step=0, **kwargs):
            return [float(step)] * len(completions)

    comp = CompositeReward([{"name": "step_echo", "weight": 3}])
    assert comp(["a", "b"], ["x", "y"], step=2) == [6.0, 6.0]


@pytest.mark.parametrize(
    "specs, message",
    [
        ([{"name": "foo"}], "rewards[0].name: unknown reward 'foo'; available: "),
        ([{"name": "format"}, {"name": "foo"}], "rewards[1].name: unknown reward 'foo'"),
        ([{"weight": 1.0}], "rewards[0].name: missing"),
        ([{"name": "format", "weight": "high"}], "rewards[0].weight: must be a finite number, got 'high'"),
        ([{"name": "format", "weight": True}], "rewards[0].weight"),
        ([{"name": "format", "weight": float("nan")}], "rewards[0].weight"),
        ([{"name": "format", "params": {"patern": "x"}}], "rewards[0].params.patern: unknown parameter"),
        ([{"name": "format", "params": ["x"]}], "rewards[0].params: must be a mapping"),
        ([{"name": "format", "wieght": 1}], "rewards[0].wieght: unknown key"),
        ([{"name": "length_penalty", "params": {"unit": "lines"}}], "rewards[0].params: invalid parameters"),
        ([{"name": "format"}, {"name": "format"}], "rewards[1].key: duplicate component key 'format'"),
        ([{"name": "format"}, 42], "rewards[1]: expected a mapping"),
        ([], "at least one"),
        ("format", "expected a list"),
    ],
)
def test_composite_bad_specs(specs, message):
    with pytest.raises(ValueError) as info:
        CompositeReward(specs)
    assert message in str(info.value)
    if "unknown reward" in message:
        assert "numeric_match" in str(info.value)


def test_composite_length_mismatch():
    comp = CompositeReward(["format"])
    with pytest.raises(ValueError, match=r"composite: batch length mismatch.*len\(completions\)=1"):
        comp.compute(["a", "b"], ["x"], ["1", "2"])


# ------------------------------------------------------------------------------------------------ model_scorer


WORDS = "what is six times seven the answer < > </ 42 41 answer paris capital of france user assistant :".split()


def make_tokenizer(pad: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"pad_token": "[PAD]"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]", **extra)


def make_model(num_labels: int = 1, pad_token_id: int | None = 0, seed: int = 0):
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 3,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        num_labels=num_labels,
        pad_token_id=pad_token_id,
        initializer_range=0.2,
    )
    return AutoModelForSequenceClassification.from_config(config).eval()


def direct_logits(model, tokenizer, texts, add_special_tokens=True):
    """Independent reference: one unpadded forward pass per text."""
    import torch

    rows = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
            rows.append(model(input_ids=torch.tensor([ids])).logits[0])
    return torch.stack(rows)


PROMPTS = [
    "what is six times seven ?",
    "the capital of france",
    "what is six times seven ?",
    "what",
    "the answer",
    "six",
]
COMPLETIONS = [" <answer>42</answer>", " is paris", " <answer>41</answer>", " is", " is 42 42 42 answer", ""]


@pytest.fixture(scope="module")
def saved_rm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_rm")
    model, tokenizer = make_model(), make_tokenizer()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def test_model_scorer_from_pretrained_matches_direct_forward(saved_rm):
    import torch

    path, model, tokenizer = saved_rm
    scorer = ModelScorer(path=str(path), batch_size=4)
    assert not scorer.loaded and scorer.model is None  # lazy: nothing loaded at construction
    scores = scorer(PROMPTS, COMPLETIONS, [None] * len(PROMPTS))
    assert scorer.loaded
    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    expected = direct_logits(model, tokenizer, texts)[:, 0]
    assert torch.allclose(torch.tensor(scores), expected, atol=1e-5)
    assert len(set(round(s, 6) for s in scores[:3])) == 3  # different texts really get different scores
    prompt_only = direct_logits(model, tokenizer, PROMPTS)[:, 0]
    assert not torch.allclose(torch.tensor(scores[:3]), prompt_only[:3], atol=1e-5)  # completion is scored

    one_by_one = ModelScorer(path=str(path), batch_size=1)(PROMPTS, COMPLETIONS)
    assert torch.allclose(torch.tensor(one_by_one), torch.tensor(scores), atol=1e-5)

    sig = ModelScorer(path=str(path), batch_size=3, normalize="sigmoid")(PROMPTS, COMPLETIONS)
    assert torch.allclose(torch.tensor(sig), torch.sigmoid(expected), atol=1e-5)
    assert ModelScorer(path=str(path))([], []) == []


def test_model_scorer_missing_path_fails_only_on_call(tmp_path):
    scorer = ModelScorer(path=str(tmp_path / "does_not_exist"))
    assert not scorer.loaded
    with pytest.raises(OSError):
        scorer(["a"], ["b"])
    assert not scorer.loaded


def test_model_scorer_with_prebuilt_model_label_index_and_composite():
    import torch

    model, tokenizer = make_model(num_labels=2, seed=1), make_tokenizer()
    scorer = ModelScorer(model=model, tokenizer=tokenizer, label_index=1, batch_size=4)
    scores = scorer(PROMPTS, COMPLETIONS)
    expected = direct_logits(model, tokenizer, [p + c for p, c in zip(PROMPTS, COMPLETIONS)])
    assert torch.allclose(torch.tensor(scores), expected[:, 1], atol=1e-5)
    assert not torch.allclose(torch.tensor(scores), expected[:, 0], atol=1e-5)

    with pytest.raises(ValueError, match="num_labels=2; set label_index"):
        ModelScorer(model=model, tokenizer=tokenizer)(["a"], ["b"])
    with pytest.raises(ValueError, match="label_index=2 out of range"):
        ModelScorer(model=model, tokenizer=tokenizer, label_index=2)(["a"], ["b"])

    comp = CompositeReward(
        [{"name": "model_scorer", "weight": 2.0, "params": {"model": model, "tokenizer": tokenizer, "label_index": 1}}]
    )
    assert torch.allclose(torch.tensor(comp(PROMPTS, COMPLETIONS)), 2 * expected[:, 1], atol=1e-5)


def test_model_scorer_chat_template_and_pad_fallback():
    import torch

    template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    model, tokenizer = make_model(pad_token_id=None, seed=2), make_tokenizer(pad=False)
    tokenizer.chat_template = template
    scorer = ModelScorer(model=model, tokenizer=tokenizer, use_chat_template=True, batch_size=4)
    scores = scorer(PROMPTS, COMPLETIONS)
    assert tokenizer.pad_token == "[EOS]" and model.config.pad_token_id == tokenizer.pad_token_id
    texts = [f"user : {p} assistant : {c} " for p, c in zip(PROMPTS, COMPLETIONS)]
    expected = direct_logits(model, tokenizer, texts, add_special_tokens=False)[:, 0]
    assert torch.allclose(torch.tensor(scores), expected, atol=1e-5)
    plain = ModelScorer(model=model, tokenizer=tokenizer, batch_size=4)(PROMPTS, COMPLETIONS)
    assert not torch.allclose(torch.tensor(plain), expected, atol=1e-5)


def test_model_scorer_argument_errors():
    with pytest.raises(ValueError, match="needs `path`"):
        ModelScorer()
    with pytest.raises(ValueError, match="batch_size"):
        ModelScorer(path="x", batch_size=0)
    with pytest.raises(ValueError, match="normalize 'softmax'"):
        ModelScorer(path="x", normalize="softmax")


def test_public_exports():
    for name in reward_models.__all__:
        assert hasattr(reward_models, name), name
    assert reward_models.__doc__.startswith("Reward functions for rlkit")
    assert math.isclose(score1(build_reward("numeric_match", abs_tol=0.1), "<answer>1.05</answer>", "1"), 1.0)
