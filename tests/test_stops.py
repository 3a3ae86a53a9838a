"""Stops and checkpoints (issue 17), through real `rlkit train` subprocesses and real checkpoint files: SIGTERM/SIGINT
write a checkpoint and exit 143/130, a SIGKILLed driver leaves no Ray agents behind, a truncated newest checkpoint
is skipped on --resume, and --resume refuses a recipe change that invalidates the saved state."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from test_faults import _env, _run, _steps  # noqa: E402 (the CLI runner these tests share)

ROOT = Path(__file__).resolve().parents[1]


def _args(out: Path, steps: int, *extra: str, mode: str = "inprocess") -> list[str]:
    """A tiny GRPO run: the untrained tiny model (no SFT), 2 prompts x 2 samples per step (~0.3 s a step)."""
    return [
        "train",
        "recipes/quickstart.yaml",
        f"output_dir={out}",
        "sft.enabled=false",
        f"grpo.steps={steps}",
        "grpo.prompts_per_step=2",
        "grpo.group_size=2",
        "eval.before=false",
        "eval.num_prompts=2",
        "eval.n_samples=2",
        "eval.ks=[1,2]",
        "logging.print_every=1",
        "logging.plot=false",
        "logging.tensorboard=false",
        f"ray.mode={mode}",
        "ray.torch_threads=1",
        *extra,
    ]


def _wait_for(cond, proc, timeout=600):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, "the run ended before the signal could be sent"
        assert time.time() - t0 < timeout
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig,mode",
    [
        (signal.SIGTERM, "inprocess"),
        (signal.SIGINT, "inprocess"),
        pytest.param(signal.SIGTERM, "actors", marks=pytest.mark.ray),
    ],
)
def test_signal_writes_a_checkpoint_and_resume_continues(tmp_path, sig, mode):
    from rlkit.utils.checkpoint import checkpoint_problem
    from rlkit.utils.train_state import read_state

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlkit", *_args(out, 200, mode=mode)],
        cwd=ROOT,
        stdout=(tmp_path / "out.log").open("w"),
        stderr=(tmp_path / "err.log").open("w"),
        env=_env(tmp_path),
    )
    _wait_for(lambda: len(_steps(out)) >= 3, proc)
    os.kill(proc.pid, sig)  # the driver only, as `kill PID` and Kubernetes do
    rc = proc.wait(timeout=300)
    err = (tmp_path / "err.log").read_text()
    assert rc == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    name = signal.Signals(sig).name
    lines = [x for x in err.splitlines() if "received" in x]
    assert len(lines) == 1, err[-3000:]
    m = re.fullmatch(rf"rlkit: received {name} at step (\d+): checkpoint -> (\S+), resume with --resume", lines[0])
    assert m, lines[0]
    n, ck = int(m.group(1)), Path(m.group(2))
    assert _steps(out) == list(range(1, n + 1))  # the step in progress was finished and logged, then saved
    assert ck == out / "checkpoints" / f"step_{n:06d}" and (ck / "COMPLETE").is_file()
    assert checkpoint_problem(ck) is None and read_state(ck)["driver"]["step"] == n
    assert not (out / "final").exists()

    resumed = _run(_args(out, n + 2, "--resume"), tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {ck} at step {n}" in resumed.stdout
    assert _steps(out) == list(range(1, n + 3))  # every step once


def test_a_second_signal_abandons_the_step_and_a_third_changes_nothing(tmp_path):
    """In the loop the first signal only marks the stop; a second raises Stop (the step or the checkpoint being
    written is abandoned); after exit() has begun, signals are ignored (the exit code stays 128 + the first)."""
    from rlkit.trainer.faults import Stop, StopSignals

    stops = StopSignals().install()
    try:
        stops.in_loop, stops.step = True, 3
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stops.received == signal.SIGTERM
        with pytest.raises(Stop):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        with pytest.raises(SystemExit) as ex:
            stops.exit(Stop(signal.SIGINT), tmp_path)
        assert ex.value.code == 143
        os.kill(os.getpid(), signal.SIGTERM)  # ignored now
        time.sleep(0.05)
    finally:
        for s in StopSignals.SIGNALS:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)


def test_a_signal_while_a_checkpoint_is_written_leaves_no_partial_checkpoint(tmp_path, tiny_dir):
    """A second signal lands inside save_hf_checkpoint (here: in save_pretrained): the Stop propagates, the
    destination never appears and no temp directory is left."""
    from transformers import AutoModelForCausalLM

    from rlkit.trainer.faults import Stop
    from rlkit.utils.checkpoint import list_complete_checkpoints, save_hf_checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    real = model.save_pretrained

    def interrupted(path, **kw):
        real(path, **kw)
        raise Stop(signal.SIGTERM)

    model.save_pretrained = interrupted
    with pytest.raises(Stop):
        save_hf_checkpoint(model, None, tmp_path / "checkpoints" / "step_000002")
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert list_complete_checkpoints(tmp_path / "checkpoints") == []


_DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import psutil, ray
    from rich.console import Console
    from rlkit.config import RayConfig
    from rlkit.trainer.setup import start_ray

    start_ray(RayConfig(num_cpus=1), Console(stderr=True))

    @ray.remote(num_cpus=0.5)
    class A:
        def pid(self):
            return os.getpid()

    a = A.remote()
    ray.get(a.pid.remote())
    deadline = time.time() + 60  # the raylet starts its agents asynchronously
    while time.time() < deadline:
        kids = psutil.Process().children(recursive=True)
        if sum(p.name().startswith("ray::") and "Agent" in p.name() for p in kids) >= 2:
            break
        time.sleep(0.2)
    print(json.dumps([[p.pid, p.create_time(), " ".join(p.cmdline())] for p in kids]), flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
@pytest.mark.ray
def test_sigkill_of_the_driver_leaves_no_ray_process_behind(tmp_path):
    """Ray fate-shares its GCS and raylet with the driver, but its dashboard and runtime-env agents outlive a
    SIGKILLed driver by about a minute (~180 MB); rlkit's reaper ends them within seconds."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(tmp_path),
    )
    try:
        kids = json.loads(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    cmdlines = [c for _, _, c in kids]
    assert any(c.startswith("ray::DashboardAgent") for c in cmdlines), cmdlines
    dashboard = [c for c in cmdlines if "ray/dashboard/dashboard.py" in c]
    assert all("--disable-frontend" in c for c in dashboard), dashboard  # no web dashboard, only its API head

    def alive():
        out = []
        for pid, created, cmd in kids:
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(cmd[:60])
            except psutil.Error:
                pass
        return out

    deadline = time.time() + 20  # without the reaper the agents stay ~65 s
    while alive() and time.time() < deadline:
        time.sleep(0.5)
    left = alive()
    for pid, created, _ in kids:  # never leave them to the rest of the test session
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:
                p.kill()
        except psutil.Error:
            pass
    assert not left, f"still running 20 s after the driver was SIGKILLed: {left}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real run with training checkpoints at steps 2 and 4."""
    base = tmp_path_factory.mktemp("stops")
    proc = _run(_args(base / "run", 4, "checkpoint.save_every=2"), base)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (base / "run" / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    return base / "run"


def _copy(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.slow
def test_resume_skips_a_truncated_newest_checkpoint(trained, tmp_path):
    out = _copy(trained, tmp_path)
    newest = out / "checkpoints" / "step_000004"
    _truncate(newest / "model.safetensors")  # its COMPLETE marker stays
    proc = _run(_args(out, 6, "checkpoint.save_every=2", "--resume"), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(
        rf"resume: skipping {newest}: model\.safetensors: \d+ bytes, \d+ when it was saved", proc.stdout
    ), proc.stdout[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step_000002'} at step 2" in proc.stdout
    assert _steps(out) == [1, 2, 3, 4, 5, 6]
    assert (out / "checkpoints" / "step_000004" / "COMPLETE").is_file()  # rewritten by the resumed run


@pytest.mark.slow
def test_resume_with_no_intact_checkpoint_is_one_clear_error(trained, tmp_path):
    out = _copy(trained, tmp_path)
    _truncate(out / "checkpoints" / "step_000004" / "model.safetensors")
    _truncate(out / "checkpoints" / "step_000002" / "optimizer.safetensors", 0.9)
    proc = _run(_args(out, 6, "--resume"), tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("rlkit: error: resume: no intact checkpoint in "), err
    assert "step_000004 (model.safetensors: " in err and "step_000002 (optimizer.safetensors: " in err


def test_checkpoint_problem_reads_safetensors_headers_without_a_size_manifest(tmp_path, tiny_dir):
    """Checkpoints whose marker predates the recorded sizes are still checked: the safetensors header must account
    for the file's size exactly."""
    from transformers import AutoModelForCausalLM

    from rlkit.utils.checkpoint import checkpoint_problem, save_hf_checkpoint

    ck = save_hf_checkpoint(
        AutoModelForCausalLM.from_pretrained(tiny_dir),
        None,
        tmp_path / "step_000002",
        extra_files={"optimizer.safetensors": b"", "trainer_state.json": "{}"},
    )
    assert checkpoint_problem(ck) is None
    marker = json.loads((ck / "COMPLETE").read_text())
    assert marker["sizes"]["model.safetensors"] == (ck / "model.safetensors").stat().st_size
    del marker["sizes"], marker["sha256"]  # a marker written before sizes and hashes were recorded
    (ck / "COMPLETE").write_text(json.dumps(marker))
    assert checkpoint_problem(ck) is None
    size = (ck / "model.safetensors").stat().st_size
    _truncate(ck / "model.safetensors", 0.99)
    problem = checkpoint_problem(ck)
    assert problem.startswith("model.safetensors: ") and f"its tensors need {size}" in problem, problem
    (ck / "model.safetensors").write_bytes(b"\x00" * 4)
    assert "shorter than the 8-byte header length" in checkpoint_problem(ck)


@pytest.mark.slow
def test_resume_refuses_a_recipe_change_that_invalidates_the_saved_state(trained, tmp_path):
    out = _copy(trained, tmp_path)
    recipe_yaml = (out / "recipe.yaml").read_text()
    proc = _run(_args(out, 6, "grpo.group_size=4", "--resume"), tmp_path)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err == (
        f"rlkit: error: grpo.group_size: is 4 but {out / 'checkpoints' / 'step_000004'} was trained "
        "with 2; --resume continues a run only with the same values (restore them, start a new "
        "output_dir, or pass --allow-recipe-change)"
    ), err
    assert (out / "recipe.yaml").read_text() == recipe_yaml  # nothing in out/ was touched
    assert _steps(out) == [1, 2, 3, 4]

    # harmless changes resume: more steps, logging, checkpoint cadence, evaluation
    proc = _run(
        _args(
            out, 6, "logging.print_every=2", "checkpoint.save_every=3", "eval.n_samples=4", "eval.ks=[1,4]", "--resume"
        ),
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "at step 4" in proc.stdout and _steps(out) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "override,key,old,new",
    [
        ("grpo.group_size=4", "grpo.group_size", 2, 4),
        ("grpo.prompts_per_step=3", "grpo.prompts_per_step", 2, 3),
        ("grpo.learning_rate=0.01", "grpo.learning_rate", 5e-4, 0.01),
        (
            "regularizers=[{name: kl, estimator: k3, coef: 0.01, reference: initial}]",
            "regularizers[0].coef",
            0.001,
            0.01,
        ),
        ("regularizers=js", "regularizers[0].name", "kl", "js"),
        ("regularizers=null", "regularizers[0].name", "kl", "<unset>"),
        # grpo={}: the PPO recipe drops the grpo keys it would not read (they are refused otherwise)
        (("algorithm=ppo", "grpo={}"), "algorithm", "grpo", "ppo"),
        ("model.dtype=bfloat16", "model.dtype", "float32", "bfloat16"),
        ("seed=1", "seed", 0, 1),
        ("sft.enabled=true", "sft.enabled", False, True),
        ("data.params={ops: ['-'], max_operand: 49, n_eval: 200}", "data.params.ops[0]", "+", "-"),
    ],
)
def test_changed_resume_keys_are_named_with_both_values(tmp_path, override, key, old, new):
    from rlkit._config import ConfigError
    from rlkit.config import load_recipe
    from rlkit.trainer.faults import check_resume_recipe, resume_recipe

    base = ["sft.enabled=false", "grpo.prompts_per_step=2", "grpo.group_size=2"]
    saved = json.loads(json.dumps(resume_recipe(load_recipe(ROOT / "recipes/quickstart.yaml", base))))
    overrides = [override] if isinstance(override, str) else list(override)
    changed = load_recipe(ROOT / "recipes/quickstart.yaml", [*base, *overrides])
    with pytest.raises(ConfigError) as err:
        check_resume_recipe(changed, saved, tmp_path / "step_000004")
    assert err.value.path == key
    assert f"is {new!r} but" in str(err.value) if new != "<unset>" else "is '<unset>' but" in str(err.value)
    assert f"trained with {old!r}" in str(err.value)


def test_harmless_changes_and_equivalent_specs_resume(tmp_path):
    from rlkit.config import load_recipe
    from rlkit.trainer.faults import check_resume_recipe, resume_recipe

    base = ["sft.enabled=false", "grpo.prompts_per_step=2", "grpo.group_size=2"]
    saved = json.loads(json.dumps(resume_recipe(load_recipe(ROOT / "recipes/quickstart.yaml", base))))
    for extra in (
        [
            "grpo.steps=999",
            "logging.print_every=1",
            "checkpoint.save_every=7",
            "eval.n_samples=16",
            "eval.ks=[1,16]",
            "ray.mode=inprocess",
            "output_dir=elsewhere",
            "sft.cache_dir=/tmp/x",
        ],
        # the preset written out as its full spec is the same regularizer
        ["regularizers=kl_k3"],
    ):
        check_resume_recipe(load_recipe(ROOT / "recipes/quickstart.yaml", [*base, *extra]), saved, tmp_path)
    check_resume_recipe(load_recipe(ROOT / "recipes/quickstart.yaml", base), None, tmp_path)  # older checkpoint


def test_a_changed_file_of_the_same_size_is_caught_by_its_hash(tmp_path, tiny_dir):
    from transformers import AutoModelForCausalLM

    from rlkit.utils.checkpoint import checkpoint_problem, file_sha256, save_hf_checkpoint

    ck = save_hf_checkpoint(
        AutoModelForCausalLM.from_pretrained(tiny_dir),
        None,
        tmp_path / "step_000002",
        extra_files={"trainer_state.json": '{"step": 2}'},
    )
    marker = json.loads((ck / "COMPLETE").read_text())
    assert marker["sha256"]["model.safetensors"] == file_sha256(ck / "model.safetensors")
    assert checkpoint_problem(ck) is None
    f = ck / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte inside the last tensor: same size, headers still consistent
    f.write_bytes(bytes(data))
    assert checkpoint_problem(ck) == "model.safetensors: its content changed since it was saved (SHA-256 differs)"


def test_every_changed_key_is_listed_and_allow_recipe_change_lets_the_resume_through(tmp_path, capsys):
    from rich.console import Console

    from rlkit._config import ConfigError
    from rlkit.config import load_recipe
    from rlkit.trainer.faults import check_resume_recipe, resume_recipe

    base = ["sft.enabled=false", "grpo.prompts_per_step=2", "grpo.group_size=2"]
    saved = json.loads(json.dumps(resume_recipe(load_recipe(ROOT / "recipes/quickstart.yaml", base))))
    changes = ["grpo.group_size=4", "grpo.learning_rate=0.01", "seed=3"]
    with pytest.raises(ConfigError) as err:
        check_resume_recipe(load_recipe(ROOT / "recipes/quickstart.yaml", [*base, *changes]), saved, tmp_path)
    assert "also changed: " in str(err.value) and "seed" in str(err.value) and "grpo.learning_rate" in str(err.value)
    allowed = load_recipe(ROOT / "recipes/quickstart.yaml", [*base, *changes, "allow_recipe_change=true"])
    got = check_resume_recipe(allowed, saved, tmp_path, Console(force_terminal=False))
    assert sorted(got) == ["grpo.group_size", "grpo.learning_rate", "seed"]
    assert "grpo.group_size 2 -> 4" in capsys.readouterr().out


def test_allow_recipe_change_flag_reaches_the_recipe():
    from rlkit.cli import _parser

    args = _parser().parse_args(["train", "recipes/quickstart.yaml", "--resume", "--allow-recipe-change"])
    assert args.resume and args.allow_recipe_change


def test_checkpoint_directories_get_the_mode_a_plain_mkdir_would(tmp_path, tiny_dir):
    """final/ and checkpoints/step_N are made by renaming a temporary directory: it must not stay 0700 while
    every other output is readable by the group."""
    import stat

    from transformers import AutoModelForCausalLM

    from rlkit.utils.checkpoint import save_hf_checkpoint

    umask = os.umask(0o022)
    os.umask(umask)
    ck = save_hf_checkpoint(AutoModelForCausalLM.from_pretrained(tiny_dir), None, tmp_path / "final")
    (tmp_path / "plain").mkdir()
    assert stat.S_IMODE(ck.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
