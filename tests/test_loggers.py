"""Metric backends (rlkit.utils.loggers) behind MetricsLogger: the registry, ``logging.backends`` in recipes, and
wandb (offline: read back from the run's transaction log) and MLflow (a local sqlite store) receiving what was
logged. No network: wandb runs in offline mode, MLflow's tracking URI is a file under tmp_path."""

import json
import math
import struct
from pathlib import Path

import pytest

from rlkit._config import ConfigError
from rlkit.config import load_recipe
from rlkit.utils.loggers import BackendContext, JsonlBackend, available_backends, make_backend, register_backend
from rlkit.utils.metrics import MetricsLogger, metrics_logger, read_metrics

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")
STEPS = [
    (1, {"reward/mean": 0.5, "eval/pass@1": 0.25, "kl": 0.125}),
    (2, {"reward/mean": float("nan"), "eval/pass@1": 0.5, "kl": 0.0625}),
]


class Recorder:
    """A backend that keeps what it was given."""

    def __init__(self, ctx=None):
        self.ctx, self.rows, self.closed = ctx, [], 0

    def log(self, step, metrics):
        self.rows.append((step, dict(metrics)))

    def close(self):
        self.closed += 1


def _log_steps(logger):
    with logger:
        for step, metrics in STEPS:
            logger.log(step, metrics)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# ---------------------------------------------------------------- the interface and the registry


def test_default_backends_are_jsonl_and_tensorboard(tmp_path):
    logger = MetricsLogger(tmp_path, enabled_progress=False)
    assert [type(b).__name__ for b in logger.backends] == ["JsonlBackend", "TensorBoardBackend"]
    logger.close()
    logger = MetricsLogger(tmp_path / "b", tensorboard=False, enabled_progress=False)
    assert [type(b).__name__ for b in logger.backends] == ["JsonlBackend"]
    logger.close()


def test_every_backend_gets_the_same_floats_and_jsonl_the_record(tmp_path):
    rec = Recorder()
    _log_steps(MetricsLogger(tmp_path, backends=["jsonl", rec], enabled_progress=False))
    assert rec.closed == 1
    assert [s for s, _ in rec.rows] == [1, 2]
    assert all(isinstance(v, float) for _, m in rec.rows for v in m.values())
    assert math.isnan(rec.rows[1][1]["reward/mean"])  # other backends get the raw value
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["kl"]) for r in rows] == [(1, 0.125), (2, 0.0625)]
    assert math.isnan(rows[1]["reward/mean"])  # null in the file


def test_registered_backend_is_selectable_from_a_recipe(tmp_path):
    made = []
    register_backend("recorder_test", lambda ctx: made.append(Recorder(ctx)) or made[-1])
    assert "recorder_test" in available_backends()
    recipe = load_recipe(QUICKSTART, ["logging.backends=[jsonl,recorder_test]", "logging.tensorboard=false"])
    assert recipe.logging.selected_backends() == ["jsonl", "recorder_test"]
    _log_steps(metrics_logger(tmp_path, recipe.logging, config={"seed": 0}, enabled_progress=False))
    (rec,) = made
    assert rec.ctx.output_dir == tmp_path and rec.ctx.config == {"seed": 0} and rec.ctx.settings == {}
    assert [s for s, _ in rec.rows] == [1, 2] and rec.closed == 1
    with pytest.raises(ValueError, match="identifier"):
        register_backend("no spaces", Recorder)


def test_jsonl_time_is_the_loggers_clock(tmp_path):
    ticks = iter([1.5, 2.25])
    backend = make_backend("jsonl", BackendContext(tmp_path, clock=lambda: next(ticks)))
    assert isinstance(backend, JsonlBackend)
    backend.log(3, {"a": 1.0})
    backend.log(4, {"a": float("inf")})
    backend.close()
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 3, "time": 1.5, "a": 1.0},
        {"step": 4, "time": 2.25, "a": None},
    ]


def test_a_failing_backend_does_not_leave_the_others_open(tmp_path):
    class Broken(Recorder):
        def close(self):
            super().close()
            raise OSError("disk gone")

    broken, rec = Broken(), Recorder()
    logger = MetricsLogger(tmp_path, backends=[broken, rec], enabled_progress=False)
    with pytest.raises(OSError, match="disk gone"):
        logger.close()
    assert broken.closed == 1 and rec.closed == 1
    logger.close()  # idempotent
    assert rec.closed == 1


# ---------------------------------------------------------------- logging.* in recipes


@pytest.mark.parametrize(
    "override, message",
    [
        ("logging.backends=[jsonl,nope]", "logging: backends: 'nope' is not a logging backend (known: jsonl, "),
        ("logging.backends=[jsonl,jsonl]", "logging: backends lists a backend twice"),
        ("logging.backends=[tensorboard]", "logging: plot draws metrics.jsonl: keep jsonl in backends"),
        ("logging.wandb={project: p, colour: red}", "logging: wandb.colour: unknown key (allowed: project, "),
        ("logging.wandb={mode: cloud}", "logging: wandb.mode must be offline, online or disabled, got 'cloud'"),
        ("logging.mlflow={uri: x}", "logging: mlflow.uri: unknown key (allowed: tracking_uri, "),
    ],
)
def test_bad_logging_sections_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(QUICKSTART, [override])
    assert str(err.value).startswith(message), str(err.value)


def test_tensorboard_false_drops_it_from_the_default_backends():
    assert load_recipe(QUICKSTART).logging.selected_backends() == ["jsonl", "tensorboard"]
    recipe = load_recipe(QUICKSTART, ["logging.tensorboard=false", "logging.backends=[jsonl,tensorboard,mlflow]"])
    assert recipe.logging.selected_backends() == ["jsonl", "mlflow"]
    assert load_recipe(QUICKSTART, ["logging.backends=[tensorboard]", "logging.plot=false"]).logging.backends == [
        "tensorboard"
    ]


def test_dpo_logs_to_the_recipes_backends(tmp_path):
    """The DPO loop builds its logger from ``logging`` like the online loop: jsonl and MLflow here, no TensorBoard."""
    pytest.importorskip("mlflow")
    import io

    from rich.console import Console

    from rlkit.trainer.dpo import run_dpo

    out = tmp_path / "run"
    recipe = load_recipe(
        ROOT / "recipes" / "dpo.yaml",
        [
            f"output_dir={out}",
            "sft.enabled=false",
            "model.name_or_path=tiny",
            "dpo.num_pairs=12",
            "dpo.eval_pairs=6",
            "dpo.batch_size=12",
            "dpo.steps=2",
            "dpo.task_eval=false",
            "logging.plot=false",
            "checkpoint.save_final=false",
            "logging.backends=[jsonl,mlflow]",
        ],
    )
    run_dpo(recipe, Console(file=io.StringIO()))
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert (out / "mlflow.db").is_file() and not (out / "tensorboard").exists()


# ---------------------------------------------------------------- wandb (offline) and MLflow (sqlite)


def _wandb_records(path: Path):
    """The records of a wandb transaction log: a 7-byte file header, then 32 KiB blocks of chunks
    ``crc32 (4) | length (2, LE) | type (1: full, 2: first, 3: middle, 4: last)``, zero-padded at a block's end;
    a record is a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:
            pos += left
            continue
        chunk, pos = chunk + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def wandb_history(run_dir: Path, timeout_s: float = 60.0) -> tuple[list[dict], dict]:
    """The history rows and the config of the offline wandb run under ``run_dir``. ``run.finish()`` returns once
    wandb's service has the exit record; the service writes the file a moment later, so this waits for it."""
    import time

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(_wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    rows, config = [], {}
    for record in records:
        kind = record.WhichOneof("record_type")
        items = {"history": record.history.item, "run": record.run.config.update, "config": record.config.update}.get(
            kind
        )
        if items is None:
            continue
        values = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
        if kind == "history":
            rows.append(values)
        else:
            config.update(values)
    return rows, config


def test_wandb_offline_run_holds_the_logged_values(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # the recipe's dir wins
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    out = tmp_path / "run"
    recipe = load_recipe(QUICKSTART, ["logging.backends=[jsonl,wandb]", "logging.wandb={project: rlkit-test}"])
    _log_steps(metrics_logger(out, recipe.logging, config={"grpo": {"steps": 2}, "seed": 0}, enabled_progress=False))
    rows, config = wandb_history(out)
    assert [r["_step"] for r in rows] == [1, 2]
    for row, (_, metrics) in zip(rows, STEPS):
        assert all(_same(row[k], v) for k, v in metrics.items()), row
    assert config["grpo"] == {"steps": 2} and config["seed"] == 0
    assert len(read_metrics(out)) == 2  # jsonl beside it


def test_mlflow_sqlite_run_holds_the_logged_values(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(
        QUICKSTART,
        [
            "logging.backends=[jsonl,mlflow]",
            f"logging.mlflow={{tracking_uri: '{uri}', experiment: exp, tags: {{a: b}}}}",
        ],
    )
    for run in ("first", "second"):  # the second run finds the experiment the first created
        _log_steps(
            metrics_logger(
                tmp_path / run, recipe.logging, config={"grpo": {"steps": 2}, "note": "x"}, enabled_progress=False
            )
        )
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id], order_by=["attributes.start_time"])
    assert [r.info.run_name for r in runs] == ["first", "second"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["a"] == "b"
    assert run.data.params == {"grpo.steps": "2", "note": "x"}
    for name in ("reward/mean", "kl", "eval/pass_1"):  # '@' is not allowed in an MLflow name
        source = "eval/pass@1" if name == "eval/pass_1" else name
        got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        assert len(got) == 2 and all(
            s == step and _same(v, metrics[source]) for (s, v), (step, metrics) in zip(got, STEPS)
        ), (name, got)


def test_mlflow_default_store_is_sqlite_in_the_output_dir(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _log_steps(MetricsLogger(tmp_path, backends=["mlflow"], enabled_progress=False))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("rlkit").experiment_id])
    assert run.info.run_name == tmp_path.name and run.data.metrics["kl"] == 0.0625
