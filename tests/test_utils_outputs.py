"""rlkit.utils: crash-safe checkpoints, metrics logging, pass@k, summary table, plots."""

import io
import itertools
import json
import math
import os
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from rlkit.utils import checkpoint as ckpt
from rlkit.utils.evaluation import pass_at_k, print_summary_table, summarize_correctness
from rlkit.utils.metrics import MetricsLogger, match_progress_key, read_metrics
from rlkit.utils.plotting import default_plot_keys, plot_pass_at_k, plot_training_curves


# ---------------------------------------------------------------- pass@k


def brute_force_pass_at_k(n, c, k):
    """Independent reference: fraction of all k-subsets of the n samples that contain a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases_and_errors():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 10, 3) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0  # k = n: the only subset is everything
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)  # pass@1 = c / n
    for bad in [(3, 1, 4), (3, 4, 1), (3, -1, 1), (3, 1, 0), (0, 0, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


@pytest.mark.parametrize("n,c,k", [(5000, 37, 500), (5000, 900, 200), (20000, 1, 1), (300, 299, 2)])
def test_pass_at_k_large_n_matches_exact_rational(n, c, k):
    # C(5000, 500) overflows a float; exact big-integer rationals are the reference
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-11, abs=1e-15)


def test_summarize_correctness_means_over_prompts():
    T, F = True, False
    out = summarize_correctness([[T, F, F, F], [T, T, T, T], [F, F, F, F]], ks=[2, 1])
    assert list(out) == ["pass@1", "pass@2"]
    assert out["pass@1"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert out["pass@2"] == pytest.approx((0.5 + 1 + 0) / 3)  # 1 - C(3,2)/C(4,2) = 0.5
    with pytest.raises(ValueError, match="prompt 1"):
        summarize_correctness([[T, F, T], [T, F]], ks=[3])
    with pytest.raises(ValueError):
        summarize_correctness([], ks=[1])


def test_print_summary_table_rows_and_deltas():
    from rich.console import Console

    buf = io.StringIO()
    before = {"accuracy": 0.5, "pass@4": 0.6, "pass@1": 0.3, "pass@10": 0.7}
    after = {"accuracy": 0.25, "pass@4": 0.75, "pass@1": 0.4, "length": 120.0}
    print_summary_table(before, after, "eval", console=Console(file=buf, width=100, force_terminal=False))
    text = buf.getvalue()
    rows = [line for line in text.splitlines() if any(w in line for w in ("pass@", "accuracy", "length"))]
    names = [next(w for w in ("pass@10", "pass@1", "pass@4", "accuracy", "length") if w in r) for r in rows]
    assert names == ["pass@1", "pass@4", "pass@10", "accuracy", "length"]
    assert "+0.1000" in rows[0] and "+0.1500" in rows[1] and "-0.2500" in rows[3]
    assert "0.7000" in rows[2] and "+" not in rows[2] and "120.0000" in rows[4]
    assert "eval" in text


# ---------------------------------------------------------------- atomic writes, state dicts


def test_atomic_write_json_replaces_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "state.json"
    ckpt.atomic_write_json(target, {"a": 1})
    ckpt.atomic_write_json(target, {"b": [1, 2.5, "x"]})
    assert json.loads(target.read_text()) == {"b": [1, 2.5, "x"]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]

    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is written
        ckpt.atomic_write_json(target, {"c": float("nan")})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        ckpt.atomic_write_bytes(target, b"partial")
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"b": [1, 2.5, "x"]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_state_dict_roundtrip_with_shared_tensors(tmp_path):
    w = torch.randn(4, 3)
    sd = {"w": w, "tied": w, "view": w[1], "b": torch.arange(5, dtype=torch.int64), "e": torch.empty(0)}
    path = ckpt.save_state_dict(tmp_path / "s.safetensors", sd)
    loaded = ckpt.load_state_dict(path)
    assert sorted(loaded) == sorted(sd)
    for k in sd:
        assert loaded[k].dtype == sd[k].dtype and torch.equal(loaded[k], sd[k]), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_list_complete_checkpoints_ignores_temp_and_incomplete(tmp_path):
    def make(name, complete=True):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "COMPLETE").write_text("{}")

    for name in ["step_10", "step_2", "step_1", "other_3", ".tmp-step_4-abc", "step_best"]:
        make(name)
    make("step_3", complete=False)
    (tmp_path / "step_5").write_text("a file, not a checkpoint")
    assert [p.name for p in ckpt.list_complete_checkpoints(tmp_path)] == ["step_1", "step_2", "step_10", "step_best"]
    assert [p.name for p in ckpt.list_complete_checkpoints(tmp_path, prefix="other_")] == ["other_3"]
    assert ckpt.list_complete_checkpoints(tmp_path / "missing") == []


# ---------------------------------------------------------------- Hugging Face checkpoints


def tiny_model(seed):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2}
    for word in "the cat sat on a mat and dog ran far".split():
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]", pad_token="[PAD]")


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def load_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


IDS = torch.tensor([[3, 4, 5, 6, 7, 8, 1, 2]])


def test_save_hf_checkpoint_roundtrip_and_overwrite(tmp_path):
    from transformers import AutoTokenizer

    tok = tiny_tokenizer()
    model_a, model_b = tiny_model(0), tiny_model(1)
    assert not torch.equal(logits_of(model_a, IDS), logits_of(model_b, IDS))
    path = tmp_path / "step_1"
    extra = {"trainer_state.json": '{"step": 1}', "rng/state.bin": b"\x00\x01"}
    assert ckpt.save_hf_checkpoint(model_a, tok, path, extra_files=extra) == path
    files = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
    assert "model.safetensors" in files and "COMPLETE" in files and "config.json" in files
    assert not [f for f in files if f.endswith(".bin") and f != "rng/state.bin"]
    assert (path / "trainer_state.json").read_text() == '{"step": 1}'
    assert (path / "rng/state.bin").read_bytes() == b"\x00\x01"
    assert torch.equal(logits_of(load_model(path), IDS), logits_of(model_a, IDS))
    loaded_tok = AutoTokenizer.from_pretrained(path)
    text = "the cat sat on a mat"
    assert loaded_tok(text)["input_ids"] == tok(text)["input_ids"] == [3, 4, 5, 6, 7, 8]

    ckpt.save_hf_checkpoint(model_b, tok, path)  # overwrite in place
    assert torch.equal(logits_of(load_model(path), IDS), logits_of(model_b, IDS))
    assert not (path / "trainer_state.json").exists()  # a fresh directory, not a merge
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]  # no .tmp-* left behind
    assert ckpt.list_complete_checkpoints(tmp_path) == [path]


def test_save_hf_checkpoint_crash_keeps_previous(tmp_path, monkeypatch):
    tok = tiny_tokenizer()
    model_a, model_b = tiny_model(0), tiny_model(1)
    path = tmp_path / "step_1"
    ckpt.save_hf_checkpoint(model_a, tok, path)
    expected = logits_of(model_a, IDS)

    # 1. the final rename (temp dir -> path) fails after the old checkpoint was moved aside
    real_replace = os.replace

    def failing_install(src, dst):
        if Path(dst) == path and Path(src).name.startswith(".tmp-step_1-") and "-old-" not in Path(src).name:
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_install)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save_hf_checkpoint(model_b, tok, path)
    monkeypatch.undo()
    assert torch.equal(logits_of(load_model(path), IDS), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]

    # 2. an error while writing (bad extra file name) never touches path
    with pytest.raises(ValueError):
        ckpt.save_hf_checkpoint(model_b, tok, path, extra_files={"../escape.txt": "x"})
    assert torch.equal(logits_of(load_model(path), IDS), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]

    # 3. the process "dies" between the two renames (install and restore both fail): path is absent, the old
    #    checkpoint is intact under .tmp-step_1-old-*, which the listing ignores
    def failing_all_into_path(src, dst):
        if Path(dst) == path:
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_all_into_path)
    with pytest.raises(RuntimeError, match="intact at"):
        ckpt.save_hf_checkpoint(model_b, tok, path)
    monkeypatch.undo()
    assert not path.exists()
    (old,) = [p for p in tmp_path.iterdir()]
    assert old.name.startswith(".tmp-step_1-old-") and (old / "COMPLETE").is_file()
    assert ckpt.list_complete_checkpoints(tmp_path) == []
    assert torch.equal(logits_of(load_model(old), IDS), expected)


# ---------------------------------------------------------------- metrics


def strict_json(line):
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(line, parse_constant=refuse)


def test_metrics_logger_jsonl_tensorboard_and_nan(tmp_path):
    from rich.console import Console
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    console = Console(file=io.StringIO(), force_terminal=False)
    with MetricsLogger(tmp_path, console=console) as logger:
        logger.log(1, {"reward/mean": torch.tensor(0.5), "kl": np.float32(0.25), "n": 3, "flag": True})
        logger.log(2, {"reward/mean": float("nan"), "kl": np.array(0.125), "loss": float("inf")})
        with pytest.raises(ValueError):
            logger.log(3, {"step": 1.0})
        with pytest.raises(TypeError):
            logger.log(3, {"x": torch.ones(2)})
        with pytest.raises(TypeError):
            logger.log(3, {"x": "text"})
    with pytest.raises(RuntimeError):
        logger.log(4, {"x": 1.0})

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rows = [strict_json(line) for line in lines]
    assert rows[0] == {"step": 1, "time": rows[0]["time"], "reward/mean": 0.5, "kl": 0.25, "n": 3.0, "flag": 1.0}
    assert rows[1]["reward/mean"] is None and rows[1]["loss"] is None and rows[1]["kl"] == 0.125
    assert 0 <= rows[0]["time"] <= rows[1]["time"] < 60
    back = read_metrics(tmp_path)
    assert math.isnan(back[1]["reward/mean"]) and back[0]["kl"] == 0.25

    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    kl = acc.Scalars("kl")
    assert [(e.step, e.value) for e in kl] == [(1, 0.25), (2, 0.125)]
    assert math.isnan(acc.Scalars("reward/mean")[1].value)


def test_metrics_logger_ci_lines_every_n_steps(tmp_path):
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with MetricsLogger(tmp_path, tensorboard=False, progress_total=25, print_every=10, console=console) as logger:
        for step in range(26):
            logger.log(step, {"reward/mean": step / 100, "reward/std": 9.0, "entropy": 1.5})
    lines = buf.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["step 0/25", "step 10/25", "step 20/25", "step 25/25"]
    summary = lines[1].split(" | ")[1]
    assert summary == "reward=0.1 entropy=1.5"  # reward/std is not shown; kl is absent
    assert not list(tmp_path.glob("tensorboard"))

    quiet = io.StringIO()
    with MetricsLogger(
        tmp_path / "q", tensorboard=False, enabled_progress=False, console=Console(file=quiet, force_terminal=False)
    ) as logger:
        logger.log(0, {"reward": 1.0})
    assert quiet.getvalue() == ""


def test_metrics_logger_live_bar_on_terminal(tmp_path):
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with MetricsLogger(tmp_path, tensorboard=False, progress_total=3, console=console) as logger:
        for step in range(1, 4):
            logger.log(step, {"train/kl": 0.03125, "reward": 0.75})
        assert logger._progress is not None
    assert "kl=0.03125" in buf.getvalue() and "reward=0.75" in buf.getvalue()


def test_progress_key_matching_rule():
    names = ["reward/std", "train/reward/mean", "reward/mean", "rewards", "reward_model/loss"]
    assert match_progress_key("reward", names) == "reward/mean"
    assert match_progress_key("reward", names + ["reward"]) == "reward"
    assert match_progress_key("reward", ["reward/std", "rewards", "reward_model/loss"]) is None
    assert match_progress_key("kl", ["kl_coef", "policy/kl"]) == "policy/kl"


def test_read_metrics_tolerates_only_a_truncated_last_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": nu')
    assert read_metrics(p) == [{"step": 1, "a": 1.0}]
    p.write_text('{"step": 1, "a": 1.0}\n{"step": 2,\n{"step": 3, "a": 2.0}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_metrics(p)


# ---------------------------------------------------------------- plots


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_training_curves(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False, enabled_progress=False) as logger:
        for step in range(5):
            logger.log(
                step,
                {
                    "lr": 1e-6,
                    "policy/loss": 1.0 / (step + 1),
                    "m1": 1,
                    "m2": 2,
                    "m3": 3,
                    "m4": 4,
                    "m5": 5,
                    "m6": 6,
                    "entropy": 2.0,
                    "kl": step * 0.01,
                    "reward/mean": step * 0.1,
                    "dead": float("nan"),
                },
            )
    keys = plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "all.png")
    # the constant series (lr, m1..m6, entropy) and the all-NaN one are left out (tests/test_friction.py)
    assert keys == ["reward/mean", "policy/loss", "kl"]
    assert keys == default_plot_keys(read_metrics(tmp_path))
    w3, h3 = png_size(tmp_path / "all.png")
    assert plot_training_curves(tmp_path, tmp_path / "one.png", keys=["kl"]) == ["kl"]
    w1, h1 = png_size(tmp_path / "one.png")
    assert w3 > 2 * w1 and h3 >= h1  # 1 x 3 grid (the constants named under it) vs a single subplot
    with pytest.raises(ValueError, match="nope"):
        plot_training_curves(tmp_path, tmp_path / "x.png", keys=["nope"])
    assert not (tmp_path / "x.png").exists()


def test_plot_pass_at_k(tmp_path):
    out = plot_pass_at_k({"before": {1: 0.3, 4: 0.5, 16: 0.7}, "after": {1: 0.4, 4: 0.6, 16: 0.72}}, tmp_path / "p.png")
    assert out == tmp_path / "p.png"
    w, h = png_size(out)
    assert w > 100 and h > 100 and out.stat().st_size > 2000
    with pytest.raises(ValueError):
        plot_pass_at_k({}, tmp_path / "q.png")
