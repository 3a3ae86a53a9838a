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
    (t / "long.jsonl").write_text("".join(json.dumps({"prompt": "1+" * 200 + "1=", "answer": "201"}) + "\n"
                                          for _ in range(20)))
    (t / "ok.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n"
                                        for i in range(20)))
    return t


CASES = [  # (name, args with {t} for the temp dir, expected start of the message after "rlkit: error: ")
    ("malformed YAML", ["check", "{t}/malformed.yaml"], "{t}/malformed.yaml: malformed YAML at line 2, column 5"),
    ("recipe file missing", ["check", "recipes/nope.yaml"], "recipes/nope.yaml: recipe file not found"),
    ("unknown key", ["check", Q, "grpo.stpes=3"], "grpo.stpes: unknown key"),
    ("wrong type", ["check", Q, "grpo.steps=many"], "grpo.steps: Input should be a valid integer"),
    ("out-of-range value", ["check", Q, "rollout.temperature=-1"], "rollout.temperature: Input should be greater"),
    ("unknown regularizer", ["check", Q, "regularizers=kl_k4"], "regularizers[0]: unknown regularizer 'kl_k4'"),
    ("impossible combination", ["check", Q, "regularizers=[{name: kl, placement: reward, weighting: dads}]"],
     "regularizers[0].weighting: 'dads' weights depend on advantages"),
    ("unknown reward", ["check", Q, "rewards=[{name: exact}]"], "rewards[0].name: unknown reward 'exact'"),
    ("bad reward option", ["check", Q, "rewards=[{name: numeric_match, on_error: ignore}]"],
     "rewards[0].on_error: Input should be 'zero' or 'fail'"),
    ("data file missing", ["train", Q, "data.source=/data/missing.jsonl"], "data: data file '/data/missing.jsonl'"),
    ("column missing", ["train", Q, "data.source={t}/nocol.jsonl"],
     "data: '{t}/nocol.jsonl': missing prompt column 'prompt' (columns: question, answer)"),
    ("empty dataset", ["train", Q, "data.source={t}/empty.jsonl"], "data: data source '{t}/empty.jsonl' is empty"),
    ("custom data, SFT on, no sft.data", ["train", Q, "data.source={t}/ok.jsonl", "output_dir={t}/o1"],
     "sft.data: data.source is '{t}/ok.jsonl': give SFT data"),
    ("no chat template", ["train", Q, NOSFT, "data.chat_template=true", "output_dir={t}/o2"],
     "data.chat_template: the tokenizer of 'tiny' has no chat template"),
    ("prompt longer than the context", ["train", Q, NOSFT, "data.source={t}/long.jsonl", "output_dir={t}/o3"],
     "data: train prompt 0 "),
    ("model directory missing", ["train", Q, NOSFT, "model.name_or_path=/models/missing", "output_dir={t}/o4"],
     "model.name_or_path: model directory '/models/missing' not found"),
    ("soup checkpoint missing", ["train", Q, NOSFT, "output_dir={t}/o5",
                                 "regularizers=[{name: kl, reference: {type: soup, checkpoints: [/ck/a, /ck/b]}}]"],
     "regularizers.reference.checkpoints: checkpoint '/ck/a' not found"),
    ("sweep over an unknown key", ["ablate", Q, "--sweep", "grpo.stpes=1,2", "--out", "{t}/o6"],
     "cell grpo.stpes=1 seed 0: grpo.stpes: unknown key"),
    ("eval of a missing checkpoint", ["eval", "runs/none/final"], "checkpoint: 'runs/none/final' not found"),
]


@pytest.mark.parametrize("name,args,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(files, name, args, expected):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(files)}
    args = [a.replace("{t}", str(files)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "rlkit", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("rlkit: error: " + expected.replace("{t}", str(files))), lines[-1]
