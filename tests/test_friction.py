"""Friction fixes (issue 17): rlkit's own SFT progress (TRL's dict printing off, losses kept, training unchanged),
`rlkit eval` in-process by default (same numbers as Ray), training_curves.png panels chosen from what the run
logged, and SIGTERM/SIGINT during DPO (the step finished, its weights saved, exit 128 + signal)."""

import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict:
    return {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}


def _rlkit(*args, home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlkit", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(home),
    )


def _console(terminal: bool = False):
    from rich.console import Console

    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=120, soft_wrap=True), buf


# ---------------------------------------------------------------- 1. SFT progress


def test_sft_log_every_prints_about_twenty_lines_or_print_every():
    from rlkit.trainer.sft import sft_log_every

    assert sft_log_every(1500, 5) == 75
    assert sft_log_every(20, 1) == 1
    assert sft_log_every(30, 5) == 5
    assert sft_log_every(3, 10) == 10


def test_sft_progress_lines_eta_and_jsonl():
    from rlkit.trainer.sft import SFTProgress

    console, buf = _console()
    p = SFTProgress(10, console)
    p.train_begin()
    p.step_end(1)
    p.log(1, {"loss": 4.0, "grad_norm": 2.0, "learning_rate": 0.0, "epoch": 0.1, "total_flos": 7.0})
    for s in range(2, 11):
        p.step_end(s)
        if s % 5 == 0:
            p.log(s, {"loss": 4.0 / s, "learning_rate": 1e-3 / s, "grad_norm": float("nan")})
    p.log(10, {"train_loss": 1.25, "train_runtime": 0.5})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert re.fullmatch(r"sft step 1/10 \| loss=4 lr=0 \| \d+\.\ds", lines[0]), lines[0]  # no ETA yet
    assert re.fullmatch(r"sft step 5/10 \| loss=0\.8 lr=0\.0002 \| \d+\.\ds \| ETA \d+s", lines[1]), lines[1]
    assert re.fullmatch(r"sft step 10/10 \| loss=0\.4 lr=0\.0001 \| \d+\.\ds", lines[2]), lines[2]  # done: no ETA
    assert re.fullmatch(r"sft done: 10 steps in \d+s \| mean loss=1\.25", lines[3]), lines[3]
    rows = [json.loads(x) for x in p.jsonl().splitlines()]
    assert [r["step"] for r in rows] == [1, 5, 10, 10]
    assert rows[0]["loss"] == 4.0 and "total_flos" not in rows[0] and rows[1]["grad_norm"] is None
    assert rows[-1]["train_loss"] == 1.25


def test_sft_progress_on_a_terminal_is_a_live_bar():
    from rlkit.trainer.sft import SFTProgress

    console, buf = _console(terminal=True)
    p = SFTProgress(4, console)
    p.train_begin()
    for s in range(1, 5):
        p.step_end(s)
        p.log(s, {"loss": 1.0 / s, "learning_rate": 1e-3})
    p.log(4, {"train_loss": 0.5})
    out = buf.getvalue()
    assert "sft step 4" in out and "4/4" in out and "loss=0.25" in out
    assert "sft done: 4 steps" in out and "{'loss'" not in out


def _sft_recipe(tmp_path, steps=8):
    from rlkit.config import load_recipe

    return load_recipe(
        ROOT / "recipes/quickstart.yaml",
        [
            f"output_dir={tmp_path}",
            f"sft.max_steps={steps}",
            "sft.num_examples=96",
            "sft.batch_size=16",
            "logging.print_every=2",
        ],
    )


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


@pytest.mark.usefixtures("one_thread")
def test_sft_progress_changes_nothing_in_training(tmp_path, capsys, monkeypatch):
    """The warm start with rlkit's progress gives the same weights, bit for bit, as with TRL's own printing and its
    former logging cadence (max_steps // 5); TRL's log dicts are no longer printed; the losses are kept."""
    import torch

    import rlkit.trainer.sft as sft

    recipe = _sft_recipe(tmp_path)
    new = sft.run_sft(recipe, tmp_path / "new", seed=0)
    printed = capsys.readouterr().out
    assert "{'loss'" not in printed and "train_runtime" not in printed
    assert re.search(r"^sft step 1/8 \| loss=\S+ lr=0 \| ", printed, re.M), printed
    assert re.search(r"^sft step 8/8 \| loss=\S+ lr=\S+ \| ", printed, re.M), printed
    assert re.search(r"^sft done: 8 steps in \d+s \| mean loss=", printed, re.M), printed
    rows = [json.loads(x) for x in (Path(new) / "sft_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 4, 6, 8]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows if "loss" in r)
    assert "train_loss" in rows[-1]

    monkeypatch.setattr(sft, "quiet_trainer", lambda trainer, progress: None)  # TRL's PrinterCallback stays
    monkeypatch.setattr(sft, "sft_log_every", lambda max_steps, print_every: max(1, max_steps // 5))
    old = sft.run_sft(recipe, tmp_path / "old", seed=0)
    assert "{'loss'" in capsys.readouterr().out  # the former output: TRL's dicts
    a, b = _weights(new), _weights(old)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- 2. rlkit eval placement


def test_eval_placement_is_in_process_unless_asked_or_needed(tmp_path):
    from rlkit._config import ConfigError
    from rlkit.config import load_recipe
    from rlkit.trainer.eval_run import _eval_recipe, eval_placement

    base = load_recipe(ROOT / "recipes/quickstart.yaml", [])
    assert eval_placement(base) is None
    assert eval_placement(base, use_ray=True) == "--ray"
    assert eval_placement(base, mode="actors") == "ray.mode=actors"
    two = load_recipe(ROOT / "recipes/quickstart.yaml", ["rollout.num_workers=2", "ray.mode=actors"])
    assert eval_placement(two) == "rollout.num_workers=2"
    with pytest.raises(ConfigError, match="rollout.num_workers"):
        eval_placement(two, mode="inprocess")

    # a run's own recipe.yaml records how it was trained (ray.mode: actors); it does not choose the eval's placement
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "recipe.yaml").write_text("ray: {mode: actors}\neval: {num_prompts: 3}\n")
    recipe, run_dir, source, mode = _eval_recipe(str(run / "final"), None, [])
    assert run_dir == run and mode is None and recipe.eval.num_prompts == 3
    assert _eval_recipe(str(run / "final"), None, ["ray.mode=actors"])[3] == "actors"
    assert _eval_recipe(str(run / "final"), str(run / "recipe.yaml"), [])[3] == "actors"  # an explicit --recipe


@pytest.mark.slow
@pytest.mark.ray
def test_eval_in_process_and_through_ray_give_the_same_numbers(tmp_path):
    from rlkit.models.tiny import save_tiny

    ck = save_tiny(tmp_path / "ck", seed=3)  # against the seed-0 tiny model as the reference: KL > 0
    common = [
        str(ck),
        "--recipe",
        "recipes/quickstart.yaml",
        "--reference",
        "tiny",
        "--k",
        "1,4",
        "--num-prompts",
        "5",
        "ray.torch_threads=1",
    ]
    runs = {}
    for name, extra in (("inprocess", []), ("ray", ["--ray"])):
        proc = _rlkit("eval", *common, "--out", str(tmp_path / f"{name}.json"), *extra, home=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text()), proc.stdout + proc.stderr
    (a, log_a), (b, log_b) = runs["inprocess"], runs["ray"]
    assert "in-process (--ray for Ray actors)" in log_a and "Ray: started" not in log_a
    assert "Ray actors (--ray)" in log_b and "Ray: started a local cluster" in log_b
    assert a.pop("placement") == "inprocess" and b.pop("placement") == "ray"
    a.pop("eval_time_s"), b.pop("eval_time_s")
    assert a == b  # every number identical, not merely close
    assert a["num_prompts"] == 5 and a["n_samples"] == 4 and a["kl_to_initial"] > 0 and a["entropy"] > 0


# ---------------------------------------------------------------- 3. training_curves.png panels


def _rows(n=6, **series):
    return [
        {"step": s + 1, "time": 0.1 * s, **{k: (f(s) if callable(f) else f) for k, f in series.items()}}
        for s in range(n)
    ]


def test_panels_drop_constant_and_duplicate_series_and_keep_loss_and_grad_norm():
    from rlkit.utils.plotting import plan_training_panels

    rows = _rows(
        **{
            "rollout/logprob_gap": lambda s: 1e-7 * (s % 2),
            "kl_k3/value": lambda s: 0.01 * s,
            "kl_k3/coef": 0.001,
            "loss/policy": lambda s: 1 / (s + 1),
            "loss/total": lambda s: 1 / (s + 1) + 1e-3 * 0.01 * s,
            "policy/entropy": lambda s: 2 - 0.1 * s,
            "grad_norm": lambda s: 0.5 + 0.1 * s,
            "skipped_updates": 0.0,
            "reward/mean": lambda s: 0.1 * s,
            "reward/accuracy": lambda s: 0.1 * s + 0.05,
            "response/length": lambda s: 8 + s % 3,
            "reward/numeric_match": lambda s: 0.1 * s,
            "reward/failures/numeric_match": 0.0,
            "kl_initial/k3": lambda s: 3e-14 * (s % 3),
            "time/step": lambda s: 0.2 + s,
            "dead": float("nan"),
            "js/value": lambda s: 0.01 * s,  # a second regularizer that happens to equal the first: still a twin
        }
    )
    plan = plan_training_panels(rows)
    assert plan.series == [
        "reward/mean",
        "reward/accuracy",
        "loss/total",
        "loss/policy",
        "grad_norm",
        "kl_k3/value",
        "policy/entropy",
        "response/length",
        "rollout/logprob_gap",
    ]
    assert plan.dropped["kl_k3/coef"] == "constant 0.001"
    assert plan.dropped["skipped_updates"] == "constant 0"
    assert plan.dropped["reward/failures/numeric_match"] == "constant 0"
    assert plan.dropped["kl_initial/k3"].startswith("constant")  # float noise at 1e-14 is not a curve
    assert plan.dropped["reward/numeric_match"] == "same as reward/mean"
    assert plan.dropped["js/value"] == "same as kl_k3/value"
    assert plan.dropped["time/step"] == "timing" and plan.dropped["dead"] == "no finite value"
    assert plan.eval == {}


def test_panels_keep_every_regularizer_value_and_components_that_differ():
    from rlkit.utils.plotting import plan_training_panels

    rows = _rows(
        **{
            "reward/mean": lambda s: 0.5 * s,
            "reward/numeric_match": lambda s: 0.4 * s,
            "reward/format": lambda s: 0.1 * s,
            "loss": lambda s: 1.0 / (s + 1),
            "kl_k3/value": lambda s: 0.01 * s,
            "js/value": lambda s: 0.02 * s * s,
            "lp_reg/value": lambda s: -0.01 * s,
            "grad_norm": lambda s: 1.0 + (s % 2),
        }
    )
    plan = plan_training_panels(rows)
    assert plan.series == [
        "reward/mean",
        "reward/numeric_match",
        "reward/format",
        "loss",
        "grad_norm",
        "kl_k3/value",
        "js/value",
        "lp_reg/value",
    ]
    assert plan.dropped == {}


def test_panels_eval_bars_from_the_summary_and_the_limit():
    from rlkit.utils.plotting import MAX_PANELS, plan_training_panels

    summary = {
        "eval_before": {"pass@1": 0.2, "pass@8": 0.5, "pass@k": 0.5, "greedy_accuracy": 0.25, "entropy": 1.5, "k": 8},
        "eval_after": {"pass@1": 0.4, "pass@8": 0.6, "pass@k": 0.6, "greedy_accuracy": 0.5, "entropy": 1.1, "k": 8},
    }
    rows = _rows(**{f"m{i}": (lambda s, i=i: s * (i + 1) + s * s * i) for i in range(20)})
    plan = plan_training_panels(rows, summary)
    assert plan.eval == {
        "before": {"pass@1": 0.2, "pass@8": 0.5, "greedy_accuracy": 0.25},
        "after": {"pass@1": 0.4, "pass@8": 0.6, "greedy_accuracy": 0.5},
    }
    assert len(plan.series) == MAX_PANELS - 1  # the eval panel takes one slot
    assert sum(why == "over the limit" for why in plan.dropped.values()) == 20 - (MAX_PANELS - 1)
    dpo = plan_training_panels(rows[:2], {"eval_before": None, "eval_after": {"pref/accuracy": 0.7, "pass@1": 0.1}})
    assert dpo.eval == {"after": {"pass@1": 0.1, "pref/accuracy": 0.7}}
    assert plan_training_panels(_rows(n=1, loss=1.0)).dropped == {"loss": "one point"}


def test_training_curves_png_from_a_run_directory(tmp_path):
    from rlkit.utils.metrics import MetricsLogger
    from rlkit.utils.plotting import plot_training_curves

    with MetricsLogger(tmp_path, tensorboard=False, enabled_progress=False) as logger:
        for step in range(1, 7):
            logger.log(
                step,
                {
                    "reward/mean": 0.1 * step,
                    "reward/numeric_match": 0.1 * step,
                    "kl_k3/coef": 1e-3,
                    "loss/total": 1.0 / step,
                    "grad_norm": 0.3 + 0.01 * step,
                },
            )
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "eval_before": {"pass@1": 0.1, "greedy_accuracy": 0.2},
                "eval_after": {"pass@1": 0.3, "greedy_accuracy": 0.4},
            }
        )
    )
    keys = plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "training_curves.png")
    assert keys == ["reward/mean", "loss/total", "grad_norm"]
    data = (tmp_path / "training_curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    # nothing moved and nothing evaluated (an untrained model, one step): still a figure, no error
    flat = tmp_path / "flat"
    with MetricsLogger(flat, tensorboard=False, enabled_progress=False) as logger:
        for step in range(1, 4):
            logger.log(step, {"reward/mean": 0.0, "loss/total": 0.0})
    assert plot_training_curves(flat, flat / "c.png") == ["reward/mean", "loss/total"]


# ---------------------------------------------------------------- 4. DPO SIGTERM / SIGINT


def _dpo_args(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train",
        "recipes/dpo.yaml",
        f"output_dir={out}",
        "sft.enabled=false",
        "model.name_or_path=tiny",
        f"dpo.steps={steps}",
        "dpo.num_pairs=64",
        "dpo.batch_size=4",
        "dpo.eval_pairs=8",
        "dpo.task_eval=false",
        "logging.print_every=1",
        "logging.tensorboard=false",
        "logging.plot=false",
        *extra,
    ]


def _steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip().endswith("}")]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dpo_signal_finishes_the_step_saves_the_weights_and_exits_128_plus_signal(tmp_path, sig):
    from transformers import AutoModelForCausalLM

    from rlkit.utils.checkpoint import checkpoint_problem

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlkit", *_dpo_args(out, 100_000)],
        cwd=ROOT,
        stdout=(tmp_path / "out.log").open("w"),
        stderr=(tmp_path / "err.log").open("w"),
        env=_env(tmp_path),
    )
    t0 = time.time()
    while len(_steps(out)) < 3:
        assert proc.poll() is None, (tmp_path / "err.log").read_text()[-3000:]
        assert time.time() - t0 < 600
        time.sleep(0.1)
    os.kill(proc.pid, sig)
    rc = proc.wait(timeout=300)
    err = (tmp_path / "err.log").read_text()
    assert rc == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if "received" in x]
    assert len(lines) == 1, err[-3000:]
    name = signal.Signals(sig).name
    m = re.fullmatch(
        rf"rlkit: received {name} at step (\d+): weights -> (\S+); DPO has no --resume \(no optimizer "
        r"state is saved\): rerun to train from the start, or evaluate them with rlkit eval (\S+)",
        lines[0],
    )
    assert m, lines[0]
    n, ck = int(m.group(1)), Path(m.group(2))
    assert Path(m.group(3)) == ck == out / f"stopped_at_step_{n:06d}"
    assert _steps(out) == list(range(1, n + 1))  # the step in progress was finished and logged
    assert checkpoint_problem(ck) is None and (ck / "COMPLETE").is_file()
    assert json.loads((ck / "stopped.json").read_text()) == {
        "algorithm": "dpo",
        "step": n,
        "steps": 100_000,
        "resumable": False,
        "signal": name,
    }
    AutoModelForCausalLM.from_pretrained(ck)  # a model directory
    assert not (out / "final").exists() and not (out / "summary.json").exists()

    # DPO still refuses --resume, in one line (what the stop message says)
    again = _rlkit(*_dpo_args(out, 100_000), "--resume", home=tmp_path, timeout=120)
    assert again.returncode == 2 and "has no mid-run checkpoints or --resume" in again.stderr, again.stderr[-2000:]


def test_dpo_signal_before_the_first_step_stops_at_once(tmp_path, monkeypatch):
    """Outside the training loop a signal stops the run at once (no weights to save), exit 128 + signal."""
    import rlkit.trainer.dpo as dpo
    from rlkit.config import load_recipe

    recipe = load_recipe(ROOT / "recipes/dpo.yaml", _dpo_args(tmp_path, 5)[3:])

    def signalled(_recipe):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(dpo, "load_pairs", signalled)
    console, _ = _console()
    try:
        with pytest.raises(SystemExit) as ex:
            dpo.run_dpo(recipe, console)
    finally:
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
    assert ex.value.code == 143
    assert not any(p.name.startswith("stopped_at_step_") for p in tmp_path.iterdir())
