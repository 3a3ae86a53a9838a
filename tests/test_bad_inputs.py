"""Every bad input of docs/errors.md, through the CLI: exit status 2 and one line naming what and where."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
Q = "recipes/quickstart.yaml"
NOSFT = "sft.enabled=false"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    t = tmp_path_factory.mktemp("bad")
    (t / "malformed.yaml").write_text("grpo: {steps: 3\nseed: [1, 2\n")
    (t / "empty.jsonl").write_text("")
    (t / "nocol.jsonl").write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n")
    (t / "long.jsonl").write_text(
        "".join(json.dumps({"prompt": "1+" * 200 + "1=", "answer": "201"}) + "\n" for _ in range(20))
    )
    (t / "ok.jsonl").write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(20))
    )
    rows = [json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) for i in range(40)]
    (t / "null.jsonl").write_text("\n".join(rows[:3] + ['{"prompt": null, "answer": "4"}'] + rows[4:]) + "\n")
    # blank lines count: the empty prompt is on file line 6 (row 4 of the data)
    (t / "emptyprompt.jsonl").write_text(
        "\n".join(rows[:2] + ["", ""] + rows[2:3] + ['{"prompt": "", "answer": "4"}'] + rows[4:]) + "\n"
    )
    (t / "badline.jsonl").write_text(
        "\n".join(rows[:20] + [""] + rows[20:36] + ['{"prompt": "x" "answer": "3"}'] + rows[37:]) + "\n"
    )  # file line 38
    (t / "null.csv").write_text("prompt,answer\n1+1=,2\n,3\n2+2=,4\n")
    (t / "null.json").write_text(json.dumps([{"prompt": "1+1=", "answer": "2"}, {"prompt": None, "answer": "3"}]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["1+1=", "2+2=", "  "], "answer": ["2", "4", "6"]}), t / "blank.parquet")
    (t / "afile").write_text("not a directory\n")
    (t / "noconfig").mkdir()
    (t / "noconfig" / "model.safetensors").write_bytes(b"")
    (t / "dup.yaml").write_text("extends: " + str(ROOT / Q) + "\ngrpo:\n  steps: 3\n  group_size: 4\n  steps: 5\n")
    (t / "child.yaml").write_text("extends: dup.yaml\nseed: 1\n")
    return t


CASES = [  # (name, args with {t} for the temp dir, expected start of the message after "rlkit: error: ")
    ("malformed YAML", ["check", "{t}/malformed.yaml"], "{t}/malformed.yaml: malformed YAML at line 2, column 5"),
    ("recipe file missing", ["check", "recipes/nope.yaml"], "recipes/nope.yaml: recipe file not found"),
    ("unknown key", ["check", Q, "grpo.stpes=3"], "grpo.stpes: unknown key"),
    ("wrong type", ["check", Q, "grpo.steps=many"], "grpo.steps: Input should be a valid integer"),
    ("out-of-range value", ["check", Q, "rollout.temperature=-1"], "rollout.temperature: Input should be greater"),
    ("unknown regularizer", ["check", Q, "regularizers=kl_k4"], "regularizers[0]: unknown regularizer 'kl_k4'"),
    (
        "impossible combination",
        ["check", Q, "regularizers=[{name: kl, placement: reward, weighting: dads}]"],
        "regularizers[0].weighting: 'dads' weights depend on advantages",
    ),
    (
        "another algorithm's section",
        ["check", "recipes/ppo_kl_adaptive.yaml", "grpo.steps=5", "grpo.group_size=4"],
        "grpo: sets grpo.group_size, grpo.steps, but algorithm 'ppo' reads its settings from `ppo:` only",
    ),
    ("unknown reward", ["check", Q, "rewards=[{name: exact}]"], "rewards[0].name: unknown reward 'exact'"),
    (
        "bad reward option",
        ["check", Q, "rewards=[{name: numeric_match, on_error: ignore}]"],
        "rewards[0].on_error: Input should be 'zero' or 'fail'",
    ),
    ("data file missing", ["train", Q, "data.source=/data/missing.jsonl"], "data: data file '/data/missing.jsonl'"),
    (
        "column missing",
        ["train", Q, "data.source={t}/nocol.jsonl"],
        "data: '{t}/nocol.jsonl': missing prompt column 'prompt' (columns: question, answer)",
    ),
    ("empty dataset", ["train", Q, "data.source={t}/empty.jsonl"], "data: data source '{t}/empty.jsonl' is empty"),
    (
        "custom data, SFT on, no sft.data",
        ["train", Q, "data.source={t}/ok.jsonl", "output_dir={t}/o1"],
        "sft.data: data.source is '{t}/ok.jsonl': give SFT data",
    ),
    (
        "no chat template",
        ["train", Q, NOSFT, "data.chat_template=true", "output_dir={t}/o2"],
        "data.chat_template: the tokenizer of 'tiny' has no chat template",
    ),
    (
        "prompt longer than the context",
        ["train", Q, NOSFT, "data.source={t}/long.jsonl", "output_dir={t}/o3"],
        "data: train prompt 0 ",
    ),
    (
        "model directory missing",
        ["train", Q, NOSFT, "model.name_or_path=/models/missing", "output_dir={t}/o4"],
        "model.name_or_path: model directory '/models/missing' not found",
    ),
    (
        "unknown attention kernel",
        ["check", Q, "model.attn_implementation=flash"],
        "model.attn_implementation: 'flash' is not an attention kernel",
    ),
    (
        "attention kernel not installed",
        ["train", Q, NOSFT, "model.attn_implementation=flash_attention_2", "output_dir={t}/oattn"],
        "model.attn_implementation: 'flash_attention_2' cannot be used here",
    ),
    (
        "soup checkpoint missing",
        [
            "train",
            Q,
            NOSFT,
            "output_dir={t}/o5",
            "regularizers=[{name: kl, reference: {type: soup, checkpoints: [/ck/a, /ck/b]}}]",
        ],
        "regularizers.reference.checkpoints: checkpoint '/ck/a' not found",
    ),
    (
        "sweep over an unknown key",
        ["ablate", Q, "--sweep", "grpo.stpes=1,2", "--out", "{t}/o6"],
        "cell grpo.stpes=1 seed 0: grpo.stpes: unknown key",
    ),
    ("eval of a missing checkpoint", ["eval", "runs/none/final"], "checkpoint: 'runs/none/final' not found"),
    # issue 17: each of these was a traceback or silence
    (
        "null prompt (jsonl)",
        ["train", Q, NOSFT, "data.source={t}/null.jsonl", "output_dir={t}/o7"],
        "data: '{t}/null.jsonl' line 4: column 'prompt' is null",
    ),
    (
        "empty prompt (jsonl, blank lines counted)",
        ["train", Q, NOSFT, "data.source={t}/emptyprompt.jsonl", "output_dir={t}/o8"],
        "data: '{t}/emptyprompt.jsonl' line 6: column 'prompt' is empty",
    ),
    (
        "null prompt (csv)",
        ["train", Q, NOSFT, "data.source={t}/null.csv", "output_dir={t}/o9"],
        "data: '{t}/null.csv' line 3: column 'prompt' is",
    ),
    (
        "null prompt (json)",
        ["train", Q, NOSFT, "data.source={t}/null.json", "output_dir={t}/o10"],
        "data: '{t}/null.json' record 2: column 'prompt' is null",
    ),
    (
        "blank prompt (parquet)",
        ["train", Q, NOSFT, "data.source={t}/blank.parquet", "output_dir={t}/o11"],
        "data: '{t}/blank.parquet' row 3: column 'prompt' is empty",
    ),
    (
        "malformed jsonl line",
        ["train", Q, NOSFT, "data.source={t}/badline.jsonl", "output_dir={t}/o12"],
        "data: data source '{t}/badline.jsonl' line 38: not valid JSON",
    ),
    ("output_dir is a file", ["train", Q, "output_dir={t}/afile"], "output_dir: '{t}/afile' is a file"),
    (
        "output_dir under a file",
        ["train", Q, "output_dir={t}/afile/run"],
        "output_dir: '{t}/afile/run' cannot be created: '{t}/afile' is a file",
    ),
    (
        "model directory without config.json",
        ["train", Q, NOSFT, "model.name_or_path={t}/noconfig", "output_dir={t}/o13"],
        "model.name_or_path: model directory '{t}/noconfig' has no config.json",
    ),
    (
        "eval of a directory without config.json",
        ["eval", "{t}/noconfig"],
        "checkpoint: model directory '{t}/noconfig' has no config.json",
    ),
    ("infinite learning rate", ["check", Q, "grpo.learning_rate=.inf"], "grpo.learning_rate: Input should be a finite"),
    ("nan temperature", ["check", Q, "rollout.temperature=nan"], "rollout.temperature: Input should be a finite"),
    (
        "infinite regularizer coef",
        ["check", Q, "regularizers=[{name: kl, coef: .inf}]"],
        "regularizers[0].coef: Input should be a finite",
    ),
    (
        "infinite reward weight",
        ["check", Q, "rewards=[{name: numeric_match, weight: -.inf}]"],
        "rewards[0].weight: Input should be a finite",
    ),
    (
        "duplicate YAML key",
        ["check", "{t}/dup.yaml"],
        "{t}/dup.yaml: duplicate key 'grpo.steps' at line 5 (first at line 3)",
    ),
    (
        "duplicate YAML key in an extended recipe",
        ["check", "{t}/child.yaml"],
        "{t}/dup.yaml: duplicate key 'grpo.steps' at line 5",
    ),
    (
        "check: model directory without config.json",
        ["check", Q, "model.name_or_path={t}/noconfig"],
        "model.name_or_path: model directory '{t}/noconfig' has no config.json",
    ),
    (
        "check: model directory missing",
        ["check", Q, "model.name_or_path=/models/missing"],
        "model.name_or_path: model directory '/models/missing' not found",
    ),
    (
        "check: data file missing",
        ["check", Q, NOSFT, "data.source=/data/missing.jsonl"],
        "data.source: data file '/data/missing.jsonl' not found",
    ),
    (
        "check: column missing",
        ["check", Q, NOSFT, "data.source={t}/nocol.jsonl"],
        "data.source: '{t}/nocol.jsonl': missing prompt column 'prompt'",
    ),
    (
        "check: null prompt",
        ["check", Q, NOSFT, "data.source={t}/ok.jsonl", "data.eval_source={t}/null.jsonl"],
        "data.eval_source: '{t}/null.jsonl' line 4: column 'prompt' is null",
    ),
    (
        "check: custom data, SFT on, no sft.data",
        ["check", Q, "data.source={t}/ok.jsonl"],
        "sft.data: data.source is '{t}/ok.jsonl': give SFT data",
    ),
    (
        "check: output_dir under a file",
        ["check", Q, "output_dir={t}/afile/run"],
        "output_dir: '{t}/afile/run' cannot be created: '{t}/afile' is a file",
    ),
]


@pytest.mark.parametrize("name,args,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(files, name, args, expected):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(files)}
    args = [a.replace("{t}", str(files)) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "rlkit", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("rlkit: error: " + expected.replace("{t}", str(files))), lines[-1]
