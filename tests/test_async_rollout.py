"""One-step off-policy rollouts (``grpo.async_rollout``): the next batch is generated while the learner trains;
checkpoints record the data position before the prefetched batch so a resumed run draws it again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray  # the actor placement: the rollout actor generates while the learner actor trains
ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "sft.enabled=false",
    "grpo.steps=4",
    "grpo.prompts_per_step=4",
    "grpo.group_size=4",
    "eval.before=false",
    "eval.num_prompts=4",
    "eval.n_samples=2",
    "eval.ks=[1,2]",
    "logging.print_every=1",
    "logging.plot=false",
    "logging.tensorboard=false",
    "data.params={n_train: 64, n_eval: 8}",
    "ray.mode=actors",
]  # the rollout actor generates while the learner actor trains (in-process: test_inprocess)


def rlkit(*args, home):
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "rlkit", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.slow
def test_async_rollout_runs_checkpoints_before_prefetch_and_resumes(tmp_path):
    from rlkit.utils.train_state import read_state

    args = [
        "train",
        "recipes/quickstart.yaml",
        f"output_dir={tmp_path}",
        *FAST,
        "grpo.async_rollout=true",
        "checkpoint.save_every=2",
        "checkpoint.keep=5",
    ]
    proc = rlkit(*args, home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # with behaviour = rollout log-probs, the first update's ratio is pi_new/pi_rollout: finite and near 1
    assert all(0.5 < r["policy/ratio_mean"] < 2.0 for r in rows)
    # at step 2 the batch of step 3 was already drawn; the checkpoint holds the position before it
    step2 = read_state(tmp_path / "checkpoints" / "step_000002")["driver"]
    assert step2["cursor"] == 2 * 4
    step4 = read_state(tmp_path / "checkpoints" / "step_000004")["driver"]
    assert step4["cursor"] == 4 * 4  # last step: nothing prefetched
    # resume from step 2: steps 3..4 are redone and every step is logged once
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step_000004")
    proc = rlkit(*args, "--resume", home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
