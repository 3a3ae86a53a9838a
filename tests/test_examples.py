"""The runnable examples: fine-tuning a local model on local files, and a distributed job on a Ray head node.
(The ablation example runs in test_ablate.py; the TRL examples in test_examples_trl.py.)"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "sft.max_steps=30",
    "grpo.steps=2",
    "grpo.prompts_per_step=4",
    "grpo.group_size=4",
    "eval.num_prompts=6",
    "eval.n_samples=4",
    "eval.ks=[1,4]",
    "logging.plot=false",
    "logging.tensorboard=false",
]


def _env(home: Path) -> dict:
    return {
        **os.environ,
        "HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }


@pytest.mark.slow
def test_finetune_local_model_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, "examples/finetune_local_model.py", "--out", str(tmp_path), *SMALL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval_after"]["num_prompts"] == 6
    assert summary["initial_model"].endswith("sft/run0")  # SFT ran on sft.jsonl before GRPO
    # train.jsonl and heldout.jsonl, the user's columns; the header counts the prompts evaluated (eval.num_prompts)
    assert "prompts 1500 | eval prompts 6 (of 100 held out)" in proc.stdout
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.ray
def test_distributed_example_joins_a_ray_head_with_two_rollout_workers(tmp_path):
    port = _free_port()
    env = {**_env(tmp_path), "RAY_PORT": str(port), "OUT": str(tmp_path / "run"), "NUM_CPUS": "4"}
    proc = subprocess.run(
        ["bash", "examples/distributed_grpo.sh", *SMALL], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"Ray: joined cluster at 127.0.0.1:{port}" in log
    assert "RolloutWorker[0]" in log and "RolloutWorker[1]" in log
    assert (tmp_path / "run" / "summary.json").is_file()
    # the head node this script started is gone again
    check = subprocess.run(
        ["ray", "status", f"--address=127.0.0.1:{port}"], capture_output=True, text=True, env=env, timeout=60
    )
    assert check.returncode != 0
