"""Run set-up: task data, initial models (SFT warm starts), reference sources, the Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

from rlkit._config import ConfigError
from rlkit.config import Recipe, RayConfig


def load_task_data(recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """Train and held-out prompts as lists of ``{"prompt", "answer"}``. Data errors become :class:`ConfigError`
    naming ``data.*`` so the CLI reports them without a traceback."""
    from rlkit.data.loading import load_prompt_dataset

    d = recipe.data
    kw = dict(prompt_column=d.prompt_column, answer_column=d.answer_column)
    try:
        if d.source == "arithmetic":
            from rlkit.data.arithmetic import make_arithmetic_splits

            params = {"n_train": 2000, "n_eval": 200, "seed": recipe.seed, **d.params}
            train, held = make_arithmetic_splits(**params)
        else:
            train = load_prompt_dataset(d.source, **kw)
            if d.eval_source:
                held = load_prompt_dataset(d.eval_source, **kw)
            else:  # hold out a slice of the training file
                n = min(recipe.eval.num_prompts, max(1, len(train) // 10))
                split = train.train_test_split(test_size=n, seed=recipe.seed)
                train, held = split["train"], split["test"]
    except (ValueError, FileNotFoundError, KeyError, TypeError) as err:
        raise ConfigError("data", str(err.args[0] if err.args else err)) from None
    train_rows = [{"prompt": r["prompt"], "answer": str(r["answer"])} for r in train]
    eval_rows = [{"prompt": r["prompt"], "answer": str(r["answer"])} for r in held]
    if d.max_train_prompts:
        train_rows = train_rows[: d.max_train_prompts]
    if d.max_eval_prompts:
        eval_rows = eval_rows[: d.max_eval_prompts]
    if not train_rows:
        raise ConfigError("data.source", f"no training prompts in {d.source!r}")
    if not eval_rows:
        raise ConfigError("data.eval_source", "no held-out prompts")
    return train_rows, eval_rows


def check_model_source(recipe: Recipe) -> None:
    """A local model path (absolute, relative with ./ or ../, ~, or nested) must exist; a hub id is left to
    ``from_pretrained``. Checked before any SFT so the error comes first, naming the key."""
    name = recipe.model.name_or_path
    local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or Path(name).exists()
    if name != "tiny" and local and not Path(name).expanduser().exists():
        raise ConfigError("model.name_or_path", f"model directory {name!r} not found")


def sft_runs_needed(recipe: Recipe) -> int:
    """How many SFT warm starts the recipe asks for (``sft:<i>`` references count)."""
    n = 1
    from rlkit.regularizers import build_regularizers

    for reg in build_regularizers(recipe.regularizers):
        for ck in reg.cfg.reference.checkpoints:
            if ck.startswith("sft:"):
                n = max(n, int(ck.split(":", 1)[1]) + 1)
    return n


def make_encoder(recipe: Recipe, model, tokenizer, splits: dict[str, list[dict]]):
    """``encode(prompts) -> token ids`` (raw text, or the chat template when ``data.chat_template``), after checking
    that every prompt of every split fits the model's context together with ``rollout.max_new_tokens``: a prompt
    that does not is an error naming it, never silently truncated or dropped."""
    if recipe.data.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.chat_template", f"the tokenizer of {recipe.model.name_or_path!r} has no chat "
                                                "template: set data.chat_template=false to use raw prompts")

    def encode(texts: list[str]) -> list[list[int]]:
        if recipe.data.chat_template:
            return [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=True)["input_ids"] for t in texts]
        return [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]

    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        budget = context - recipe.rollout.max_new_tokens
        for split, rows in splits.items():
            ids = encode([r["prompt"] for r in rows])
            for i, x in enumerate(ids):
                if len(x) > budget:
                    raise ConfigError("data", f"{split} prompt {i} ({rows[i]['prompt'][:40]!r}...) has {len(x)} "
                                              f"tokens; with rollout.max_new_tokens={recipe.rollout.max_new_tokens} "
                                              f"it exceeds the model's context of {context}: shorten or remove it, "
                                              "or lower rollout.max_new_tokens")
    return encode


def sft_cache_key(recipe: Recipe) -> str:
    """A short hash of everything an SFT warm start depends on: model, data, SFT settings and the split seed."""
    import hashlib
    import json

    sft = recipe.sft.model_dump(exclude={"cache_dir"})
    blob = json.dumps({"model": recipe.model.model_dump(), "data": recipe.data.model_dump(), "sft": sft,
                       "seed": recipe.seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def prepare_initial_models(recipe: Recipe, out: Path, console) -> list[str]:
    """Paths of the initial policy (index 0) and of any further SFT runs (different seeds) for soups.

    With ``sft.cache_dir`` the runs live in ``<cache_dir>/<hash of model+data+sft+seed>/run<i>`` and are shared by
    every job with the same settings; a file lock makes concurrent jobs wait for one another instead of training
    the same warm start twice. A run without its ``COMPLETE`` marker is never reused."""
    if not recipe.sft.enabled:
        return [recipe.model.name_or_path]
    import fcntl

    from .sft import run_sft

    base = Path(recipe.sft.cache_dir) / sft_cache_key(recipe) if recipe.sft.cache_dir else out / "sft"
    base.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(sft_runs_needed(recipe)):
        path = base / f"run{i}"
        with open(base / f".run{i}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (path / "COMPLETE").exists():
                console.print(f"SFT run {i}: reusing {path}")
            else:
                console.print(f"SFT run {i}: TRL SFTTrainer, {recipe.sft.max_steps} steps (seed {recipe.sft.seed + i})")
                run_sft(recipe, path, seed=recipe.sft.seed + i)
        paths.append(str(path))
    return paths


def resolve_reference(ref: dict, init_paths: list[str], out: Path, teachers: dict[str, str] | None = None
                      ) -> tuple[str, list[str], list[float] | None]:
    """``(kind, checkpoint paths, weights)`` for a reference spec. ``sft:<i>`` names the i-th SFT warm start;
    ``teachers`` maps :func:`rlkit.trainer.references.teacher_id` to the teacher's path (``sft:tiny`` teachers)."""
    kind = ref["type"]
    if kind == "initial":
        return "initial", [init_paths[0]], None
    if kind == "teacher":
        from .references import teacher_id

        return "teacher", [(teachers or {}).get(teacher_id(ref), ref["model"])], None
    if kind == "soup":
        paths = []
        for ck in ref["checkpoints"]:
            if ck.startswith("sft:"):
                i = int(ck.split(":", 1)[1])
                if i >= len(init_paths):
                    raise ConfigError("regularizers.reference.checkpoints", f"{ck!r}: SFT is disabled or has no run {i}")
                paths.append(init_paths[i])
            else:
                if not Path(ck).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
                    raise ConfigError("regularizers.reference.checkpoints", f"checkpoint {ck!r} not found")
                paths.append(ck)
        return "soup", paths, ref.get("weights")
    raise ConfigError("regularizers.reference", f"reference type {kind!r} has no model to serve")


def start_ray(cfg: RayConfig, console) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
        console.print(f"Ray: joined cluster at {cfg.address}")
    else:
        num_cpus = cfg.num_cpus or os.cpu_count() or 2
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,  # new cluster, never a stale one
                 log_to_driver=True,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE":
                                           os.environ.get("HF_HUB_OFFLINE", "0")}})
        console.print(f"Ray: started a local cluster with {num_cpus} CPUs")
