"""Issue 17 (friction): --version, `rlkit check` reading the sources, the GRPO header's eval count, no colour
codes in pipes, non-finite floats refused in every section. Bad inputs with one-line errors are in
tests/test_bad_inputs.py."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
Q = "recipes/quickstart.yaml"


def rlkit(*args, tmp_path, env=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rlkit", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout
    )


def test_version(tmp_path):
    import rlkit as pkg

    proc = rlkit("--version", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"rlkit {pkg.__version__}"


def test_check_reads_sources_but_creates_nothing(tmp_path):
    data = tmp_path / "ok.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": i + 1}) + "\n" for i in range(30)))
    out = tmp_path / "new" / "run"
    proc = rlkit(
        "check",
        Q,
        "sft.enabled=false",
        f"data.source={data}",
        f"output_dir={out}",
        "model.name_or_path=some-org/some-model",
        tmp_path=tmp_path,
    )  # a hub id is not looked up
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{Q}: OK"
    assert not (tmp_path / "new").exists()


def test_check_finds_a_bad_line_among_the_first_rows(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + '\n\n{"prompt": "2+2=", answer: 4}\n')
    proc = rlkit("check", Q, "sft.enabled=false", f"data.source={data}", tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"rlkit: error: data.source: data source '{data}' line 3: not valid JSON")
    )


def test_grpo_header_counts_the_prompts_evaluated(tmp_path):
    # the run stops at the model check, right after the header: eval.num_prompts (100) of the 200 held out
    proc = rlkit(
        "train",
        Q,
        "sft.enabled=false",
        f"model.name_or_path={tmp_path}/missing",
        f"output_dir={tmp_path}/o",
        tmp_path=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "eval prompts 100 (of 200 held out)" in proc.stdout, proc.stdout


@pytest.mark.parametrize("args", [["check", Q], ["regularizers"], ["check", Q, "grpo.stpes=1"]])
def test_no_colour_codes_in_pipes(tmp_path, args):
    proc = rlkit(*args, tmp_path=tmp_path)
    assert "\x1b[" not in proc.stdout + proc.stderr


@pytest.mark.ray
def test_ray_worker_lines_are_not_coloured_in_a_pipe(tmp_path):
    """Ray prefixes worker lines with colour codes whatever stdout is; start_ray turns them off in a pipe."""
    script = textwrap.dedent("""
        import time, ray
        from rich.console import Console
        from rlkit.config import RayConfig
        from rlkit.trainer.setup import start_ray

        start_ray(RayConfig(num_cpus=1), Console())

        @ray.remote(num_cpus=0)
        def hello():
            print("hello from a worker", flush=True)

        ray.get(hello.remote())
        time.sleep(3)  # the driver's log thread prints the worker's line
        ray.shutdown()
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_COLOR_PREFIX", None)
    env.pop("RAY_AUTH_MODE", None)  # Ray's default: token auth turned on, with a notice start_ray filters out
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=env, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hello from a worker" in proc.stdout + proc.stderr
    assert "\x1b[" not in proc.stdout + proc.stderr
    assert "Token authentication is enabled" not in proc.stdout + proc.stderr


def test_start_ray_drops_only_rays_token_auth_default_notice():
    import logging

    from rlkit.trainer.setup import _no_token_auth_default_notice

    def record(msg):
        return logging.LogRecord(
            "ray._private.authentication.authentication_token_setup", logging.WARNING, "", 0, msg, None, None
        )

    assert not _no_token_auth_default_notice(
        record("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
    )
    assert _no_token_auth_default_notice(record("Token authentication is enabled but no token was found."))
    assert _no_token_auth_default_notice(record("Failed to start GCS."))


def test_non_finite_floats_are_refused_in_nested_models_and_on_assignment():
    from rlkit._config import ConfigError
    from rlkit.config import GRPOConfig, build_recipe

    for value in (math.inf, -math.inf, math.nan, "inf", "nan"):
        with pytest.raises(ConfigError, match=r"^grpo\.clip_high: Input should be a finite number"):
            build_recipe({"grpo": {"clip_high": value}})
    with pytest.raises(ConfigError, match=r"^model\.lora\.alpha: Input should be a finite number"):
        build_recipe({"model": {"lora": {"alpha": math.inf}}})
    with pytest.raises(ConfigError, match=r"^regularizers\[0\]\.coef: Input should be a finite number"):
        build_recipe({"regularizers": [{"name": "kl", "coef": math.nan}]})
    cfg = GRPOConfig()
    with pytest.raises(ValueError, match="finite"):
        cfg.learning_rate = math.inf
    build_recipe({"grpo": {"max_grad_norm": None, "tis_cap": None}})  # None stays the "off" value
