"""Driver-side reference set-up, before any worker starts: every regularizer's reference type runs its
:meth:`~rlkit.references.ReferenceType.prepare` (:func:`prepare_references`), with the trainer's services a type may
need (:func:`train_teacher`: the ``sft:tiny`` teacher's SFT run). Which references a run serves, and in what form:
:mod:`rlkit.trainer.reference_plan`; their TR-DPO refresh after each step: :mod:`rlkit.trainer.weight_sync`.

Teacher (KDRL-style distillation toward a stronger model, regularizer ``{reference: {type: teacher, model: ...}}``):
``model`` is a path / hub id, or ``sft:tiny``: the job trains the teacher itself as an SFT warm start (TRL, the
recipe's ``sft`` section updated by the reference's ``sft``) of the tiny model with the reference's ``tiny_config``
overrides, e.g. a wider and deeper tiny Llama trained on clean labels. Either way the teacher must share the policy's
tokenizer (:func:`rlkit.references.teacher.check_same_vocabulary`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rlkit._config import ConfigError
from rlkit.config import Recipe
from rlkit.references import ReferenceSetup, reference_type
from rlkit.references.teacher import TEACHER_SFT, check_same_vocabulary, teacher_id

__all__ = ["TEACHER_SFT", "check_same_vocabulary", "prepare_references", "teacher_id", "train_teacher"]


def prepare_references(recipe: Recipe, out: Path, init_paths: list[str], console) -> dict[str, Any]:
    """``{identity: prepared}`` for every regularizer reference whose type has a set-up step (``sft:tiny``
    teachers trained or reused, every teacher's tokenizer checked against the policy's), what
    :func:`rlkit.trainer.reference_plan.resolve_reference` hands back to the type. Errors name
    ``regularizers[i].reference``."""
    from rlkit.regularizers import build_regularizers

    setup = ReferenceSetup(
        recipe=recipe,
        out=out,
        init_paths=init_paths,
        console=console,
        train_sft=lambda spec, key: train_teacher(recipe, spec, out, console, key),
    )
    prepared: dict[str, Any] = {}
    for i, reg in enumerate(build_regularizers(recipe.regularizers)):
        ref = reg.cfg.reference
        kind = reference_type(ref.type)
        result = kind.prepare(ref, setup, f"regularizers[{i}].reference")
        if result is not None:
            prepared[kind.identity(ref)] = result
    return prepared


def train_teacher(recipe: Recipe, ref: dict, out: Path, console, key: str = "reference") -> str:
    """Train (or reuse) the ``sft:tiny`` teacher: a fresh tiny model with ``ref["tiny_config"]`` overrides, SFT with
    the recipe's settings updated by ``ref["sft"]``. Stored beside the policy's warm starts (``<out>/sft`` or
    ``sft.cache_dir``) as ``teacher-<hash of the spec>``; reused when its ``COMPLETE`` marker exists."""
    import tempfile

    from rlkit._config import validate_model
    from rlkit.config import SFTConfig
    from rlkit.models.tiny import save_tiny

    from .setup import build_once, sft_base_dir
    from .sft import run_sft

    base = sft_base_dir(recipe, out)
    sft = validate_model(
        SFTConfig, {**recipe.sft.model_dump(), **(ref.get("sft") or {}), "enabled": True}, f"{key}.sft"
    )
    digest = hashlib.sha256(
        json.dumps(
            {"spec": teacher_id(ref), "sft": sft.model_dump(), "seed": recipe.seed, "data": recipe.data.model_dump()},
            sort_keys=True,
            default=str,
        ).encode()
    )

    def train(path: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                init = save_tiny(Path(tmp) / "init", seed=sft.seed, **(ref.get("tiny_config") or {}))
            except (ValueError, TypeError) as err:
                raise ConfigError(f"{key}.tiny_config", str(err)) from None
            n = sum(p.numel() for p in _load(init).parameters())
            console.print(
                f"teacher: TRL SFTTrainer, {sft.max_steps} steps, tiny model {ref.get('tiny_config')} "
                f"({n / 1e6:.2f}M parameters)"
            )
            model = recipe.model.model_copy(update={"name_or_path": str(init), "lora": None})
            run_sft(recipe.model_copy(update={"model": model, "sft": sft}), path, seed=sft.seed)

    path = base / f"teacher-{digest.hexdigest()[:10]}"
    if not build_once(path, train):
        console.print(f"teacher: reusing {path}")
    return str(path)


def _load(path):
    from rlkit.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(path)[0]
