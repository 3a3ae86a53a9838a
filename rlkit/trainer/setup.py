"""Run set-up: task data, initial models (SFT warm starts), the prompt encoder, the Ray cluster (reference sources:
:mod:`rlkit.trainer.reference_plan`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from rlkit._config import ConfigError
from rlkit._extras import require
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
    """A local model path (absolute, relative with ./ or ../, ~, or nested) must be a directory with a
    ``config.json``; a hub id is left to ``from_pretrained``. Checked before any SFT so the error comes first,
    naming the key."""
    check_model_path(recipe.model.name_or_path, "model.name_or_path")


def check_model_path(name: str, key: str) -> None:
    from rlkit.models.loading import TINY_NAMES

    local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or Path(name).exists()
    if name in TINY_NAMES or not local:
        return
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError(key, f"model directory {name!r} not found")
    if not path.is_dir():
        raise ConfigError(key, f"{name!r} is a file: expected a model directory (config.json and weights)")
    if not (path / "config.json").is_file():
        raise ConfigError(key, f"model directory {name!r} has no config.json (not a save_pretrained directory)")


def check_output_dir(path: str, key: str = "output_dir") -> None:
    """``path`` is a writable directory or can be created as one: checked without creating anything, so a run
    fails before any work and ``rlkit check`` can say so."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(key, f"{path!r} is a file, not a directory")
    above = p
    while not above.exists() and above != above.parent:  # the nearest part of the path that exists
        above = above.parent
    if not above.is_dir():
        raise ConfigError(key, f"{path!r} cannot be created: {str(above)!r} is a file")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ConfigError(
            key,
            f"{path!r} is not writable"
            if above == p
            else f"{path!r} cannot be created: {str(above)!r} is not writable",
        )


def make_output_dir(path: str, key: str = "output_dir") -> Path:
    """``mkdir -p path`` after :func:`check_output_dir`; an OS error (a race, a full disk) names ``key`` too."""
    check_output_dir(path, key)
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(key, f"{path!r} cannot be created: {err.strerror or err}") from None
    return out


def check_recipe_sources(recipe: Recipe, rows: int = 100) -> None:
    """What ``rlkit check`` looks at beyond the schema, without creating or downloading anything: ``output_dir``
    can be created, the optional packages the recipe uses are installed (else
    :class:`~rlkit._extras.MissingExtraError`), local model directories exist with a ``config.json`` (hub ids are
    not looked up), and each data file exists and its first ``rows`` rows parse with the configured columns.
    Raises :class:`ConfigError` naming the key."""
    from rlkit._extras import require_recipe
    from rlkit.data.loading import BUILTIN, peek_prompt_dataset

    check_output_dir(recipe.output_dir)
    require_recipe(recipe)
    check_model_source(recipe)
    if recipe.algorithm == "dpo" and recipe.dpo.reference_model:
        check_model_path(recipe.dpo.reference_model, "dpo.reference_model")
    d = recipe.data
    sources = [("data.source", d.source, d.answer_column), ("data.eval_source", d.eval_source, d.answer_column)]
    if recipe.sft.enabled:
        from .sft import require_sft_data

        require_sft_data(recipe)
        if d.source != "arithmetic":  # the arithmetic warm start makes its own completions
            sources.append(("sft.data", recipe.sft.data, recipe.sft.completion_column))
    for key, src, answer in sources:
        if src is None or src in BUILTIN:
            continue
        from rlkit.workers.common import quiet_libraries

        quiet_libraries()  # no progress bars
        try:
            peek_prompt_dataset(src, prompt_column=d.prompt_column, answer_column=answer, rows=rows)
        except (ValueError, FileNotFoundError, KeyError, TypeError) as err:
            raise ConfigError(key, str(err.args[0] if err.args else err)) from None


def sft_runs_needed(recipe: Recipe) -> int:
    """How many SFT warm starts the recipe asks for (``sft:<i>`` references count: each reference type says how
    many it names, :meth:`rlkit.references.ReferenceType.sft_runs`)."""
    from rlkit.references import reference_type
    from rlkit.regularizers import build_regularizers

    refs = [reg.cfg.reference for reg in build_regularizers(recipe.regularizers)]
    return max([1] + [reference_type(ref.type).sft_runs(ref) for ref in refs])


class PromptEncoder:
    """``encode(prompts) -> token ids``: raw text, or with ``chat_template`` the tokenizer's chat template."""

    def __init__(self, tokenizer, chat_template: bool):
        self.tokenizer, self.chat_template = tokenizer, chat_template

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.chat_template:
            return [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True, return_dict=True
                )["input_ids"]
                for t in texts
            ]
        return [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]


def make_encoder(recipe: Recipe, model, tokenizer, splits: dict[str, list[dict]]) -> PromptEncoder:
    """``encode(prompts) -> token ids`` (raw text, or the chat template when ``data.chat_template``), after checking
    that every prompt of every split fits the model's context together with ``rollout.max_new_tokens``: a prompt
    that does not is an error naming it, never silently truncated or dropped."""
    if recipe.data.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "data.chat_template",
            f"the tokenizer of {recipe.model.name_or_path!r} has no chat "
            "template: set data.chat_template=false to use raw prompts",
        )

    encode = PromptEncoder(tokenizer, recipe.data.chat_template)
    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        budget = context - recipe.rollout.max_new_tokens
        for split, rows in splits.items():
            ids = encode([r["prompt"] for r in rows])
            for i, x in enumerate(ids):
                if len(x) > budget:
                    raise ConfigError(
                        "data",
                        f"{split} prompt {i} ({rows[i]['prompt'][:40]!r}...) has {len(x)} "
                        f"tokens; with rollout.max_new_tokens={recipe.rollout.max_new_tokens} "
                        f"it exceeds the model's context of {context}: shorten or remove it, "
                        "or lower rollout.max_new_tokens",
                    )
    return encode


def sft_cache_key(recipe: Recipe) -> str:
    """A short hash of everything an SFT warm start depends on: model, data, SFT settings and the split seed."""
    import hashlib
    import json

    sft = recipe.sft.model_dump(exclude={"cache_dir"})
    blob = json.dumps(
        {"model": recipe.model.model_dump(), "data": recipe.data.model_dump(), "sft": sft, "seed": recipe.seed},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def prepare_initial_models(recipe: Recipe, out: Path, console) -> list[str]:
    """Paths of the initial policy (index 0) and of any further SFT runs (different seeds) for soups.

    With ``sft.cache_dir`` the runs live in ``<cache_dir>/<hash of model+data+sft+seed>/run<i>`` and are shared by
    every job with the same settings; a file lock makes concurrent jobs wait for one another instead of training
    the same warm start twice. A run without its ``COMPLETE`` marker is never reused."""
    if not recipe.sft.enabled:
        return [recipe.model.name_or_path]
    from .sft import run_sft

    base = sft_base_dir(recipe, out)
    paths = []
    for i in range(sft_runs_needed(recipe)):

        def train(path: Path, i: int = i) -> None:
            console.print(f"SFT run {i}: TRL SFTTrainer, {recipe.sft.max_steps} steps (seed {recipe.sft.seed + i})")
            run_sft(recipe, path, seed=recipe.sft.seed + i)

        path = base / f"run{i}"
        if not build_once(path, train):
            console.print(f"SFT run {i}: reusing {path}")
        paths.append(str(path))
    return paths


def sft_base_dir(recipe: Recipe, out: Path) -> Path:
    """Where warm starts (and ``sft:tiny`` teachers) live, created: ``<sft.cache_dir>/<sft_cache_key>`` when a
    cache is set (shared across jobs), else ``<out>/sft``."""
    base = Path(recipe.sft.cache_dir) / sft_cache_key(recipe) if recipe.sft.cache_dir else out / "sft"
    base.mkdir(parents=True, exist_ok=True)
    return base


def build_once(path: Path, build: Callable[[Path], None]) -> bool:
    """``build(path)`` unless ``path`` already holds a ``COMPLETE`` model directory; True when it built. Holds the
    file lock ``<parent>/.<name>.lock`` meanwhile, so concurrent jobs sharing a cache wait for one another instead
    of training the same model twice (a directory without its ``COMPLETE`` marker is never reused)."""
    import fcntl

    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / "COMPLETE").exists():
            return False
        build(path)
        return True


#: ``_system_config`` of a local cluster started by :func:`start_ray`: no metrics export from every worker to the
#: node's agent every few seconds (rlkit records its own metrics; nothing reads Ray's without a dashboard), and no
#: idle workers started ahead of demand (Ray starts one per CPU for the first driver; an rlkit job asks for its
#: actors right away, and each actor gets a process of its own, so a prestarted worker sat idle, ~45 MB PSS)
LEAN_SYSTEM_CONFIG = {
    "enable_metrics_collection": False,
    "prestart_worker_first_driver": False,
    "enable_worker_prestart": False,
}


def _no_token_auth_default_notice(record) -> bool:
    """A logging filter: drops Ray's one-line notice that a new local cluster enabled token authentication by
    default (``RAY_AUTH_MODE`` unset). Authentication stays on, as Ray chose (the token is in ``~/.ray/auth_token``,
    generated once); the notice says only that, on every start. An explicit ``RAY_AUTH_MODE`` is respected (Ray
    prints nothing then)."""
    return "Token authentication is enabled for this Ray cluster" not in record.getMessage()


def start_ray(cfg: RayConfig, console, why: str = "ray.mode=actors") -> None:
    """Join the cluster at ``cfg.address``, or start a local one for this job that holds only what the job needs.

    A local cluster has ``cfg.num_cpus`` CPUs (default: the machine's), no dashboard (Ray still runs its API server
    head, autoscaler monitor, log monitor, and per node the raylet's dashboard and runtime-env agents: ``ray.init``
    has no switch for them), no usage stats (``ray.init`` turns them off itself), :data:`LEAN_SYSTEM_CONFIG`, and
    Ray's default object store (mapped lazily: its size costs no memory until weights pass through it). Its workers
    get ``TOKENIZERS_PARALLELISM=false`` and this process's ``HF_HUB_OFFLINE``. Ray's default token authentication
    stays on; its notice about it is not printed (:func:`_no_token_auth_default_notice`). ``why`` names what asked
    for Ray in the error when Ray is not installed."""
    import logging

    ray = require("ray", why=why)

    if ray.is_initialized():
        return
    # Ray colours the "(Worker pid=...)" prefix of every forwarded worker line, terminal or not (RAY_COLOR_PREFIX)
    tty = sys.stdout.isatty() and sys.stderr.isatty()
    if os.environ.get("NO_COLOR") or not (tty or os.environ.get("FORCE_COLOR")):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
        console.print(f"Ray: joined cluster at {cfg.address}")
    else:
        num_cpus = cfg.num_cpus or os.cpu_count() or 2
        auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
        auth_log.addFilter(_no_token_auth_default_notice)
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,  # new cluster, never a stale one
                log_to_driver=True,
                _system_config=dict(LEAN_SYSTEM_CONFIG),
                runtime_env={
                    "env_vars": {
                        "TOKENIZERS_PARALLELISM": "false",
                        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
                    }
                },
            )
        finally:
            auth_log.removeFilter(_no_token_auth_default_notice)
        _start_reaper()
        console.print(f"Ray: started a local cluster with {num_cpus} CPUs")


_REAPERS: list = []  # the reapers' Popen objects: their stdin pipes stay open while this process lives


def _start_reaper() -> None:
    """Start :mod:`rlkit.trainer._ray_reaper` for the local cluster just started: when this process exits in any
    way (SIGKILL included) it ends the raylet's children that Ray leaves running for a minute (the dashboard and
    runtime-env agents). Best effort: Linux only, and nothing happens when Ray's process table is not as expected."""
    import subprocess

    if not sys.platform.startswith("linux"):
        return
    try:
        import ray

        node: Any = ray._private.worker._global_node  # Ray's internals: checked at run time (except below)
        procs = node.all_processes
        raylet = procs["raylet"][0].process.pid
        others = [
            str(info.process.pid)
            for kind, infos in procs.items()
            if kind != "raylet"
            for info in infos
            if getattr(info, "process", None) is not None
        ]
    except (AttributeError, KeyError, IndexError, TypeError):
        return
    script = Path(__file__).with_name("_ray_reaper.py")
    try:
        _REAPERS.append(
            subprocess.Popen(
                [sys.executable, "-S", str(script), str(raylet), *others],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        )
    except OSError:
        pass
