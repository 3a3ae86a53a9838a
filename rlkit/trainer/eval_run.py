"""``rlkit eval CHECKPOINT``: held-out evaluation of any checkpoint with the same code path as training's eval.

The task, rewards and sampling come from a recipe: ``--recipe`` if given, else the ``recipe.yaml`` that ``rlkit
train`` wrote next to the checkpoint (``runs/x/final`` -> ``runs/x/recipe.yaml``), else the defaults. KL to the
initial policy is measured against ``--reference`` (default: the run's initial model from ``summary.json``).
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
    ck = Path(checkpoint)
    run_dir = find_run_dir(ck) if ck.exists() else None
    source = recipe_path or (str(run_dir / "recipe.yaml") if run_dir else None)
    data = load_yaml(source) if source else {}
    data.pop("sweep", None)
    return build_recipe(apply_overrides(data, overrides)), run_dir, source or "defaults"


def run_eval_checkpoint(checkpoint: str, recipe_path: str | None = None, overrides: list[str] | None = None,
                        reference: str | None = None, out: str | None = None, console=None) -> dict:
    import ray
    from rich.console import Console

    from rlkit.workers.common import quiet_libraries

    from .evaluate import evaluate
    from .setup import load_task_data, start_ray

    console = console or Console(soft_wrap=True)  # long paths stay on one line in logs
    quiet_libraries()
    if not (Path(checkpoint).exists() or checkpoint == "tiny"):
        raise ConfigError("checkpoint", f"{checkpoint!r} not found (a model directory, e.g. runs/quickstart/final)")
    from .setup import check_model_path

    check_model_path(checkpoint, "checkpoint")  # a directory without config.json: one line, not a traceback
    recipe, run_dir, source = eval_recipe(checkpoint, recipe_path, list(overrides or []))
    if reference is None and run_dir is not None and (run_dir / "summary.json").is_file():
        reference = json.loads((run_dir / "summary.json").read_text()).get("initial_model")
    if reference in ("none", ""):
        reference = None
    if reference is not None and not (Path(reference).exists() or reference == "tiny"):
        raise ConfigError("--reference", f"{reference!r} not found")
    _, held = load_task_data(recipe)
    ev = recipe.eval
    rows = held[: ev.num_prompts]
    console.print(f"[bold]rlkit eval[/] {checkpoint} | recipe {source} | {len(rows)} prompts x {ev.n_samples} "
                  f"samples | ks {ev.ks} | reference {reference or '-'}")
    from rlkit.models.loading import load_model_and_tokenizer

    from .setup import make_encoder

    model, tokenizer = load_model_and_tokenizer(checkpoint)
    ids = make_encoder(recipe, model, tokenizer, {"held-out": rows})([r["prompt"] for r in rows])
    del model
    start_ray(recipe.ray, console)
    from rlkit.workers import ReferenceWorker, RewardWorker
    from rlkit.workers.rollout import spawn_rollout_workers

    rc, t0 = recipe.ray, time.time()
    workers = spawn_rollout_workers(recipe, checkpoint)
    reward = RewardWorker.options(num_cpus=rc.cpus_per_reward).remote(
        [r.model_dump(exclude_defaults=True) for r in recipe.rewards])
    ref = None
    if reference is not None:
        ref = ReferenceWorker.options(num_cpus=rc.cpus_per_reference).remote(
            "initial", [reference], dtype=recipe.model.dtype, temperature=recipe.rollout.temperature,
            torch_threads=rc.torch_threads)
    result = evaluate(workers, reward, [r["prompt"] for r in rows], ids, [r["answer"] for r in rows], ev.n_samples,
                      ev.ks, ev.temperature, recipe.rollout.max_new_tokens, seed=recipe.seed + 10_000, reference=ref)
    result.update({"checkpoint": checkpoint, "recipe": source, "reference": reference,
                   "eval_time_s": time.time() - t0})
    ray.shutdown()
    from rich.table import Table

    table = Table(title=f"{checkpoint}: {result['num_prompts']} prompts x {result['n_samples']} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        if isinstance(v, float) and k != "pass@k":
            table.add_row(k, f"{v:.4f}")
    console.print(table)
    if out:
        from rlkit.utils.checkpoint import atomic_write_json

        atomic_write_json(out, result)
        console.print(f"-> {out}")
    return result
