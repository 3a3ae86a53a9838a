"""The built-in arithmetic task and the real ``datasets`` loading paths (files written to tmp_path)."""

import json
import re

import pytest

from rlkit.data import format_completion, load_prompt_dataset, make_arithmetic_splits, make_sft_dataset

PROMPT = re.compile(r"(\d+)([+\-*])(\d+)=")


def _solve(prompt):
    """Independent reference: parse ``a<op>b=`` and compute with Python ints."""
    m = PROMPT.fullmatch(prompt)
    assert m, f"malformed prompt {prompt!r}"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return {"+": a + b, "-": a - b, "*": a * b}[op], a, op, b


def test_splits_deterministic_seeded_disjoint_and_sized():
    train, held = make_arithmetic_splits(n_train=500, n_eval=100, seed=3, max_operand=20)
    assert train.column_names == ["prompt", "answer"] and held.column_names == ["prompt", "answer"]
    assert len(train) == 500 and len(held) == 100
    tp, hp = list(train["prompt"]), list(held["prompt"])
    assert len(set(tp)) == 500 and len(set(hp)) == 100  # no duplicates inside a split
    assert not set(tp) & set(hp)
    again_train, again_held = make_arithmetic_splits(n_train=500, n_eval=100, seed=3, max_operand=20)
    assert list(again_train["prompt"]) == tp and list(again_held["prompt"]) == hp
    other_train, other_held = make_arithmetic_splits(n_train=500, n_eval=100, seed=4, max_operand=20)
    assert list(other_train["prompt"]) != tp and list(other_held["prompt"]) != hp
    # the held-out split does not move when n_train changes
    _, held_small = make_arithmetic_splits(n_train=10, n_eval=100, seed=3, max_operand=20)
    assert list(held_small["prompt"]) == hp


def test_all_prompts_disjoint_when_the_whole_pool_is_used():
    # +,- with operands 0..5: 2 * 36 = 72 problems; 10 held out, the rest (62) is the training split
    train, held = make_arithmetic_splits(n_train=None, n_eval=10, seed=0, max_operand=5)
    assert len(train) == 62 and len(held) == 10
    assert len(set(train["prompt"]) | set(held["prompt"])) == 72
    capped, _ = make_arithmetic_splits(n_train=1000, n_eval=10, seed=0, max_operand=5)
    assert len(capped) == 62
    with pytest.raises(ValueError, match="n_eval=72"):
        make_arithmetic_splits(n_eval=72, max_operand=5)


@pytest.mark.parametrize("ops", [("+", "-"), ("+", "-", "*"), ("*",)])
def test_answers_are_correct_and_ops_and_ranges_respected(ops):
    train, held = make_arithmetic_splits(n_train=300, n_eval=50, seed=1, max_operand=25, ops=ops, max_mul_operand=9)
    seen = set()
    for row in list(train) + list(held):
        value, a, op, b = _solve(row["prompt"])
        assert isinstance(row["answer"], str) and row["answer"] == str(value), row
        assert op in ops
        assert 0 <= a <= 25 and 0 <= b <= 25
        if op == "*":
            assert a <= 9 and b <= 9
        seen.add(op)
    assert seen == set(ops)
    assert max(len(p) for p in train["prompt"]) <= 6  # short prompts for the tiny model


def test_nonnegative_and_min_operand_knobs():
    train, held = make_arithmetic_splits(
        n_train=None, n_eval=5, seed=0, max_operand=9, min_operand=2, nonnegative=True, ops=("-",)
    )
    rows = list(train) + list(held)
    assert len(rows) == 8 * 9 // 2  # pairs a >= b from 2..9
    for row in rows:
        value, a, _, b = _solve(row["prompt"])
        assert value >= 0 and a >= 2 and b >= 2


def test_bad_task_arguments_are_refused():
    with pytest.raises(ValueError, match="/"):
        make_arithmetic_splits(ops=("+", "/"))
    with pytest.raises(ValueError, match="max_operand"):
        make_arithmetic_splits(max_operand=-1)


def test_format_completion():
    assert format_completion("19") == "<answer>19</answer>"
    assert format_completion(-3) == "<answer>-3</answer>"


def test_sft_dataset_prompt_completion_format_and_no_held_out_leak():
    _, held = make_arithmetic_splits(n_eval=150, seed=7, max_operand=15)
    sft = make_sft_dataset(n=2000, seed=1, split_seed=7, n_eval=150, max_operand=15)
    assert sft.column_names == ["prompt", "completion"] and len(sft) == 2000
    assert not set(sft["prompt"]) & set(held["prompt"])
    for p, c in zip(sft["prompt"], sft["completion"]):
        m = re.fullmatch(r"<answer>(-?\d+)</answer>", c)
        assert m and int(m.group(1)) == _solve(p)[0]  # no noise by default
    assert list(make_sft_dataset(n=2000, seed=1, split_seed=7, n_eval=150, max_operand=15)["prompt"]) == list(
        sft["prompt"]
    )
    assert list(make_sft_dataset(n=2000, seed=2, split_seed=7, n_eval=150, max_operand=15)["prompt"]) != list(
        sft["prompt"]
    )
    # n_train restricts SFT to the first n_train training problems
    train20, _ = make_arithmetic_splits(n_train=20, n_eval=150, seed=7, max_operand=15)
    few = make_sft_dataset(n=500, seed=1, split_seed=7, n_eval=150, max_operand=15, n_train=20)
    assert set(few["prompt"]) == set(train20["prompt"])


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_sft_label_noise_fraction(noise):
    n = 4000
    sft = make_sft_dataset(n=n, seed=1, split_seed=0, n_eval=100, max_operand=20, label_noise=noise)
    wrong = 0
    for p, c in zip(sft["prompt"], sft["completion"]):
        m = re.fullmatch(r"<answer>(-?\d+)</answer>", c)
        assert m, c  # noise changes the number, never the format
        wrong += int(m.group(1)) != _solve(p)[0]
    # binomial(4000, p): 4 standard deviations is < 0.03
    assert abs(wrong / n - noise) < 0.03
    with pytest.raises(ValueError, match="label_noise"):
        make_sft_dataset(n=10, label_noise=1.5)


# ------------------------------------------------------------------------------------------------- loading


ROWS = {"question": ["1+1=", "2+3=", "9-4="], "solution": [2, 5, 5], "extra": ["a", "b", "c"]}


def _write(tmp_path, fmt):
    from datasets import Dataset

    ds = Dataset.from_dict(ROWS)
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("\n".join(json.dumps(dict(zip(ROWS, vals))) for vals in zip(*ROWS.values())) + "\n")
    elif fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps([dict(zip(ROWS, vals)) for vals in zip(*ROWS.values())]))
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        ds.to_parquet(str(path))
    elif fmt == "disk":
        path = tmp_path / "saved"
        ds.save_to_disk(str(path))
    else:  # a directory of data files
        path = tmp_path / "datadir"
        path.mkdir()
        (path / "train.jsonl").write_text(
            "\n".join(json.dumps(dict(zip(ROWS, vals))) for vals in zip(*ROWS.values())) + "\n"
        )
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "disk", "datadir"])
def test_load_prompt_dataset_round_trips_and_renames(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    out = load_prompt_dataset(str(path), prompt_column="question", answer_column="solution")
    assert list(out["prompt"]) == ROWS["question"]
    assert list(out["answer"]) == ["2", "5", "5"]  # numeric answers become strings
    assert "question" not in out.column_names and "solution" not in out.column_names
    assert list(out["extra"]) == ROWS["extra"]


def test_load_canonical_columns_need_no_rename(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) for i in range(4)))
    out = load_prompt_dataset(path)  # a Path works too
    assert list(out["prompt"]) == ["0+1=", "1+1=", "2+1=", "3+1="] and list(out["answer"]) == ["1", "2", "3", "4"]
    only_prompts = load_prompt_dataset(str(path), answer_column=None)
    assert len(only_prompts) == 4


def test_load_datasetdict_split_from_disk(tmp_path):
    from datasets import DatasetDict

    train, held = make_arithmetic_splits(n_train=30, n_eval=12, seed=5, max_operand=9)
    DatasetDict(train=train, test=held).save_to_disk(str(tmp_path / "dd"))
    out = load_prompt_dataset(str(tmp_path / "dd"), split="test")
    assert list(out["prompt"]) == list(held["prompt"])
    with pytest.raises(ValueError, match="validation"):
        load_prompt_dataset(str(tmp_path / "dd"), split="validation")


def test_load_builtin_arithmetic():
    train, held = make_arithmetic_splits(n_train=40, n_eval=10, seed=2, max_operand=12)
    a = load_prompt_dataset("arithmetic", n_train=40, n_eval=10, seed=2, max_operand=12)
    b = load_prompt_dataset("arithmetic", split="eval", n_train=40, n_eval=10, seed=2, max_operand=12)
    assert list(a["prompt"]) == list(train["prompt"]) and list(b["prompt"]) == list(held["prompt"])
    with pytest.raises(ValueError, match="bogus"):
        load_prompt_dataset("arithmetic", split="bogus")


def test_missing_column_error_names_column_file_and_present_columns(tmp_path):
    path = _write(tmp_path, "jsonl")
    with pytest.raises(ValueError) as err:
        load_prompt_dataset(str(path), answer_column="solution")  # prompt column 'prompt' is absent
    msg = str(err.value)
    assert "'prompt'" in msg and str(path) in msg and "question, solution, extra" in msg
    with pytest.raises(ValueError) as err:
        load_prompt_dataset(str(path), prompt_column="question", answer_column="label")
    assert "'label'" in str(err.value) and "answer" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("name", ["nope.jsonl", "nope.parquet", "nope_dir/sub"])
def test_missing_source_error_names_the_path(tmp_path, name):
    missing = tmp_path / name
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_prompt_dataset(str(missing))


def test_empty_sources_are_refused_naming_them(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        load_prompt_dataset(str(empty))
    from datasets import Dataset

    Dataset.from_dict({"prompt": [], "answer": []}).to_parquet(str(tmp_path / "zero.parquet"))
    with pytest.raises(ValueError, match=r"zero\.parquet.*empty"):
        load_prompt_dataset(str(tmp_path / "zero.parquet"))
