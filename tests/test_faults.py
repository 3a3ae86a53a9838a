"""Reliability, end to end through the CLI and Ray: SIGKILL + resume gives the uninterrupted run's weights, a killed
rollout worker does not stop the run, non-finite steps are skipped and stop the job after K in a row."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlkit.utils.train_state import (
    optimizer_from_files,
    optimizer_to_files,
    python_random_from_json,
    python_random_to_json,
)

ROOT = Path(__file__).resolve().parents[1]


def test_optimizer_state_round_trips_through_safetensors_and_json():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(torch.randn(2, 4)).square().sum().backward()
        opt.step()
    blob, meta = optimizer_to_files(opt.state_dict())
    meta = json.loads(json.dumps(meta))  # what trainer_state.json holds
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fresh.load_state_dict(optimizer_from_files(blob, meta))
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][i][k])), (i, k)
    import random

    r = random.Random(5)
    r.random()
    state = json.loads(json.dumps(python_random_to_json(r.getstate())))
    r2 = random.Random()
    r2.setstate(python_random_from_json(state))
    assert r.random() == r2.random()


def _args(out: Path, cache: Path, steps: int = 6) -> list[str]:
    return [
        "train",
        "recipes/quickstart.yaml",
        f"output_dir={out}",
        f"sft.cache_dir={cache}",
        "sft.max_steps=40",
        "sft.num_examples=400",
        f"grpo.steps={steps}",
        "grpo.prompts_per_step=4",
        "grpo.group_size=4",
        "checkpoint.save_every=2",
        "eval.before=false",
        "eval.num_prompts=4",
        "eval.n_samples=4",
        "eval.ks=[1,4]",
        "logging.print_every=1",
        "logging.plot=false",
        "logging.tensorboard=false",
        "ray.mode=actors",
    ]  # worker kills and restarts: the Ray actor placement


def _env(home: Path) -> dict:
    return {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}


def _run(args, home, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "rlkit", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(home),
    )


def _steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip().endswith("}")]


def _start(args, home, log: Path):
    return subprocess.Popen(
        [sys.executable, "-m", "rlkit", *args],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=_env(home),
        start_new_session=True,
    )


def _wait_for(cond, proc, timeout=600):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, "the run ended before the fault could be injected"
        assert time.time() - t0 < timeout
        time.sleep(0.2)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.ray
def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    cache = tmp_path / "sft"
    full = _run(_args(tmp_path / "full", cache), tmp_path)
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]

    out = tmp_path / "killed"
    proc = _start(_args(out, cache), tmp_path, tmp_path / "killed.log")
    _wait_for(lambda: len(_steps(out)) >= 3, proc)  # step 3 logged: the step-2 checkpoint exists
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists()
    resumed = _run([*_args(out, cache), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert re.search(r"resumed from .*step_00000[24] at step [24]", resumed.stdout), resumed.stdout[-2000:]
    assert _steps(out) == [1, 2, 3, 4, 5, 6]  # each step exactly once, none skipped
    a, b = _weights(tmp_path / "full" / "final"), _weights(out / "final")
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff == 0.0, f"resumed weights differ from the uninterrupted run by {diff}"
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    assert kept == ["step_000004", "step_000006"]  # checkpoint.keep=2


def _kill_worker_mid_run(tmp_path: Path, banner: str, steps: int) -> tuple[Path, str]:
    """Start a run, SIGKILL the worker whose start line matches ``banner`` (a regex with the pid as its group)
    once 2 steps are logged, and wait for the run to finish all ``steps`` anyway; returns (out dir, log text)."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = _start(_args(out, tmp_path / "sft", steps=steps), tmp_path, log)
    pid = lambda: re.search(banner, log.read_text())  # noqa: E731
    _wait_for(lambda: pid() is not None and len(_steps(out)) >= 2, proc)
    os.kill(int(pid().group(1)), signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert _steps(out) == list(range(1, steps + 1))
    return out, log.read_text()


@pytest.mark.slow
@pytest.mark.ray
def test_killing_a_rollout_worker_does_not_stop_the_run(tmp_path):
    _, text = _kill_worker_mid_run(tmp_path, r"RolloutWorker\[0\] pid=(\d+)", steps=8)
    # where the kill lands decides which path notices it (a generate retry, the weight sync, or Ray's restart
    # before the next call); each one says so
    assert ("rollout worker 0" in text and "re-sending weights" in text) or "was restarted by Ray" in text, text[-3000:]
    assert len(set(re.findall(r"RolloutWorker\[0\] pid=(\d+)", text))) == 2  # restarted by Ray


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_reward_worker_is_restarted_and_reported(tmp_path):
    out, text = _kill_worker_mid_run(tmp_path, r"RewardWorker pid=(\d+)", steps=6)
    assert "RewardWorker was restarted by Ray" in text, text[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    restarts = [r["workers/reward_restarts"] for r in rows]
    assert sum(restarts) == 1 and restarts[0] == 0, restarts  # one restart, counted at the step it hit


@pytest.mark.slow
@pytest.mark.ray
def test_non_finite_steps_are_skipped_and_stop_the_job(tmp_path):
    # a KL coefficient beyond float32's range (the recipe refuses inf itself) makes every loss non-finite: it is
    # inf in float32, and inf * KL or inf * 0 = nan; the weights never move
    args = [
        *_args(tmp_path / "run", tmp_path / "sft", steps=8),
        "regularizers=[{name: kl, coef: 1.0e+300}]",
        "grpo.max_bad_steps=3",
    ]
    proc = _run(args, tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("rlkit: error: step ") and "3 consecutive steps without a finite update" in err, err
    assert "Last complete checkpoint" in err and "--resume" in err
    assert "non-finite" in proc.stdout + proc.stderr
