"""``rlkit eval CHECKPOINT``: held-out evaluation of any checkpoint with the same code path as training's eval.

The task, rewards and sampling come from a recipe: ``--recipe`` if given, else the ``recipe.yaml`` that ``rlkit
train`` wrote next to the checkpoint (``runs/x/final`` -> ``runs/x/recipe.yaml``), else the defaults. KL to the
initial policy is measured against ``--reference`` (default: the run's initial model from ``summary.json``).

Placement: the rollout, reward and reference workers run in this process (no Ray cluster to start for a small
model), unless ``--ray``, a ``ray.mode=actors`` override (or ``ray: {mode: actors}`` in the ``--recipe`` file), or a
recipe that needs Ray: ``ray.address`` set, ``rollout.engine`` other than ``transformers``, ``rollout.num_workers`` >
1. The ``ray.mode`` stored in a run's own ``recipe.yaml`` says how training was placed and is not read. Both placements
run the same worker classes with the same seeds and give the same numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rlkit._config import ConfigError
from rlkit.config import Recipe, apply_overrides, build_recipe, load_yaml


def find_run_dir(checkpoint: Path) -> Path | None:
    for d in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (d / "recipe.yaml").is_file():
            return d
    return None


def eval_recipe(checkpoint: str, recipe_path: str | None, overrides: list[str]) -> tuple[Recipe, Path | None, str]:
    return _eval_recipe(checkpoint, recipe_path, overrides)[:3]


def _eval_recipe(checkpoint: str, recipe_path: str | None, overrides: list[str]):
    """``(recipe, run_dir, source, mode)``; ``mode``: the ``ray.mode`` the user asked for (an override, or the
    ``--recipe`` file), else None (a run's own ``recipe.yaml`` records the training placement, not a choice)."""
    ck = Path(checkpoint)
    run_dir = find_run_dir(ck) if ck.exists() else None
    source = recipe_path or (str(run_dir / "recipe.yaml") if run_dir else None)
    data = load_yaml(source) if source else {}
    data.pop("sweep", None)
    if not recipe_path and isinstance(data.get("ray"), dict):
        data["ray"].pop("mode", None)  # how the run was trained; the evaluation's placement is chosen here
    data = apply_overrides(data, overrides)
    mode = data["ray"].get("mode") if isinstance(data.get("ray"), dict) else None
    return build_recipe(data), run_dir, source or "defaults", mode


def eval_placement(recipe: Recipe, mode: str | None = None, use_ray: bool = False) -> str | None:
    """Why this evaluation runs its workers as Ray actors (``"--ray"``, ``"ray.mode=actors"``, ``"rollout.engine=
    vllm"``, ...), or None to run them in this process. ``mode``: the ``ray.mode`` the user asked for, if any."""
    needs = [
        (key, value)
        for key, value, bad in (
            ("ray.address", recipe.ray.address, recipe.ray.address is not None),
            ("rollout.engine", recipe.rollout.engine, recipe.rollout.engine != "transformers"),
            ("rollout.num_workers", recipe.rollout.num_workers, recipe.rollout.num_workers != 1),
        )
        if bad
    ]
    if mode == "inprocess" and needs and not use_ray:
        key, value = needs[0]
        raise ConfigError(key, f"{value!r} needs Ray actors: drop ray.mode=inprocess (or change {key})")
    if use_ray:
        return "--ray"
    if mode == "actors":
        return "ray.mode=actors"
    return f"{needs[0][0]}={needs[0][1]}" if needs and mode != "inprocess" else None


def run_eval_checkpoint(
    checkpoint: str,
    recipe_path: str | None = None,
    overrides: list[str] | None = None,
    reference: str | None = None,
    out: str | None = None,
    console=None,
    use_ray: bool = False,
) -> dict:
    """Evaluate ``checkpoint``; ``use_ray``: workers as Ray actors even where in-process would do
    (:func:`eval_placement`)."""
    from rich.console import Console

    from rlkit.workers.common import quiet_libraries

    from .setup import load_task_data

    console = console or Console(soft_wrap=True)  # long paths stay on one line in logs
    quiet_libraries()
    _check_checkpoint(checkpoint)
    recipe, run_dir, source, mode = _eval_recipe(checkpoint, recipe_path, list(overrides or []))
    why_ray = eval_placement(recipe, mode, use_ray)
    reference = _resolve_reference(reference, run_dir)
    _, held = load_task_data(recipe)
    ev = recipe.eval
    rows = held[: ev.num_prompts]
    console.print(
        f"[bold]rlkit eval[/] {checkpoint} | recipe {source} | {len(rows)} prompts x {ev.n_samples} "
        f"samples | ks {ev.ks} | reference {reference or '-'} | "
        + (f"Ray actors ({why_ray})" if why_ray else "in-process (--ray for Ray actors)")
    )
    ids = _encode_prompts(recipe, checkpoint, rows)
    result, seconds = _evaluate_placed(recipe, checkpoint, reference, rows, ids, why_ray is None, console)
    result.update(
        {
            "checkpoint": checkpoint,
            "recipe": source,
            "reference": reference,
            "eval_time_s": seconds,
            "placement": "ray" if why_ray else "inprocess",
        }
    )
    _print_result(checkpoint, result, console)
    if out:
        from rlkit.utils.checkpoint import atomic_write_json

        atomic_write_json(out, result)
        console.print(f"-> {out}")
    return result


def _check_checkpoint(checkpoint: str) -> None:
    """``checkpoint`` is a model directory (or ``tiny``): a missing one, or one without ``config.json``, is one line
    naming ``checkpoint``, not a traceback."""
    from .setup import check_model_path

    if not (Path(checkpoint).exists() or checkpoint == "tiny"):
        raise ConfigError("checkpoint", f"{checkpoint!r} not found (a model directory, e.g. runs/quickstart/final)")
    check_model_path(checkpoint, "checkpoint")


def _resolve_reference(reference: str | None, run_dir: Path | None) -> str | None:
    """The model KL is measured against: ``--reference``, else the run's initial model (``summary.json``); ``none``
    or empty for no KL. A path that does not exist is a :class:`ConfigError` naming ``--reference``."""
    if reference is None and run_dir is not None and (run_dir / "summary.json").is_file():
        reference = json.loads((run_dir / "summary.json").read_text()).get("initial_model")
    if reference in ("none", ""):
        reference = None
    if reference is not None and not (Path(reference).exists() or reference == "tiny"):
        raise ConfigError("--reference", f"{reference!r} not found")
    return reference


def _encode_prompts(recipe: Recipe, checkpoint: str, rows: list[dict]) -> list[list[int]]:
    """The held-out prompts as token ids for the checkpoint's tokenizer, checked against its context."""
    from rlkit.models.loading import load_model_and_tokenizer

    from .setup import make_encoder

    model, tokenizer = load_model_and_tokenizer(checkpoint)
    return make_encoder(recipe, model, tokenizer, {"held-out": rows})([r["prompt"] for r in rows])


def _evaluate_placed(
    recipe: Recipe,
    checkpoint: str,
    reference: str | None,
    rows: list[dict],
    ids: list[list[int]],
    inproc: bool,
    console,
) -> tuple[dict, float]:
    """Spawn the rollout, reward and (with ``reference``) reference workers, in this process or as Ray actors, and
    run training's :func:`.evaluate.evaluate` with them; the Ray cluster started for it is shut down after. Returns
    the metrics and the seconds from the placement's start (not counted) to the end."""
    from rlkit.workers import ReferenceWorker, RewardWorker
    from rlkit.workers.local import spawn
    from rlkit.workers.rollout import spawn_rollout_workers

    from .evaluate import evaluate

    rc, ev = recipe.ray, recipe.eval
    _start_placement(recipe, inproc, console)
    t0 = time.time()
    try:
        workers = spawn_rollout_workers(recipe, checkpoint, inprocess=inproc)
        reward = spawn(
            RewardWorker,
            dict(num_cpus=rc.cpus_per_reward),
            [r.model_dump(exclude_defaults=True) for r in recipe.rewards],
            inprocess=inproc,
        )
        ref = None
        if reference is not None:
            ref = spawn(
                ReferenceWorker,
                dict(num_cpus=rc.cpus_per_reference),
                "initial",
                [reference],
                dtype=recipe.model.dtype,
                temperature=recipe.rollout.temperature,
                torch_threads=rc.torch_threads,
                attn_implementation=recipe.model.attn_implementation,
                inprocess=inproc,
            )
        result = evaluate(
            workers,
            reward,
            [r["prompt"] for r in rows],
            ids,
            [r["answer"] for r in rows],
            ev.n_samples,
            ev.ks,
            ev.temperature,
            recipe.rollout.max_new_tokens,
            seed=recipe.seed + 10_000,
            reference=ref,
        )
    finally:
        if not inproc:
            import ray

            ray.shutdown()
    return result, time.time() - t0


def _start_placement(recipe: Recipe, inproc: bool, console) -> None:
    """In-process: this process's torch threads as a worker's would be; else start (or join) the Ray cluster."""
    if inproc:
        from rlkit.workers.common import setup_process

        setup_process(recipe.ray.torch_threads)
    else:
        from .setup import start_ray

        start_ray(recipe.ray, console)


def _print_result(checkpoint: str, result: dict, console) -> None:
    """One row per float metric (``pass@k`` repeats a ``pass@<k>`` row and is left out)."""
    from rich.table import Table

    table = Table(title=f"{checkpoint}: {result['num_prompts']} prompts x {result['n_samples']} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        if isinstance(v, float) and k != "pass@k":
            table.add_row(k, f"{v:.4f}")
    console.print(table)
