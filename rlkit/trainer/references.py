"""Driver-side reference set-up: teacher models (KDRL). Which references a run serves, and in what form:
:mod:`rlkit.trainer.reference_plan`; their TR-DPO refresh after each step: :mod:`rlkit.trainer.weight_sync`.

Teacher (KDRL-style distillation toward a stronger model, regularizer ``{reference: {type: teacher, model: ...}}``):
``model`` is a path / hub id, or ``sft:tiny``: the job trains the teacher itself as an SFT warm start (TRL, the
recipe's ``sft`` section updated by the reference's ``sft``) of the tiny model with the reference's ``tiny_config``
overrides, e.g. a wider and deeper tiny Llama trained on clean labels. Either way the teacher must share the policy's
tokenizer: a divergence between ``pi(y_t | .)`` and ``pi_teacher(y_t | .)`` compares the probabilities of the same
token ids, so the vocabularies (token -> id) must be equal, and for full-logit divergences so must the logits' width.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rlkit._config import ConfigError
from rlkit.config import Recipe

TEACHER_SFT = "sft:tiny"


def teacher_id(ref: dict) -> str:
    """A stable name of a teacher spec (its model plus, for ``sft:tiny``, the tiny config and SFT overrides)."""
    return json.dumps({k: ref.get(k) for k in ("model", "tiny_config", "sft")}, sort_keys=True, default=str)


def prepare_teachers(recipe: Recipe, out: Path, init_paths: list[str], console) -> dict[str, str]:
    """``{teacher_id: model path}`` for every teacher reference of the recipe: ``sft:tiny`` teachers are trained (or
    reused), every teacher's tokenizer is checked against the policy's. Errors name ``regularizers[i].reference``."""
    from rlkit.regularizers import build_regularizers

    teachers: dict[str, str] = {}
    for i, reg in enumerate(build_regularizers(recipe.regularizers)):
        ref = reg.cfg.reference
        if ref.type != "teacher":
            continue
        spec = ref.model_dump()
        key = f"regularizers[{i}].reference"
        path = train_teacher(recipe, spec, out, console, key) if ref.model == TEACHER_SFT else ref.model
        check_same_vocabulary(init_paths[0], path, f"{key}.model")
        teachers[teacher_id(spec)] = path
    return teachers


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
    sft = validate_model(SFTConfig, {**recipe.sft.model_dump(), **(ref.get("sft") or {}), "enabled": True},
                         f"{key}.sft")
    digest = hashlib.sha256(json.dumps({"spec": teacher_id(ref), "sft": sft.model_dump(), "seed": recipe.seed,
                                        "data": recipe.data.model_dump()}, sort_keys=True, default=str).encode())

    def train(path: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                init = save_tiny(Path(tmp) / "init", seed=sft.seed, **(ref.get("tiny_config") or {}))
            except (ValueError, TypeError) as err:
                raise ConfigError(f"{key}.tiny_config", str(err)) from None
            n = sum(p.numel() for p in _load(init).parameters())
            console.print(f"teacher: TRL SFTTrainer, {sft.max_steps} steps, tiny model {ref.get('tiny_config')} "
                          f"({n / 1e6:.2f}M parameters)")
            model = recipe.model.model_copy(update={"name_or_path": str(init), "lora": None})
            run_sft(recipe.model_copy(update={"model": model, "sft": sft}), path, seed=sft.seed)

    path = base / f"teacher-{digest.hexdigest()[:10]}"
    if not build_once(path, train):
        console.print(f"teacher: reusing {path}")
    return str(path)


def _load(path):
    from rlkit.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(path)[0]


def _tokenizer_source(path: str) -> str:
    """Where a model path's tokenizer lives (a LoRA adapter directory: its base model)."""
    from rlkit.models.lora import ADAPTER_CONFIG, is_adapter_dir

    if is_adapter_dir(path):
        return json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or path
    return path


def _vocab_width(path: str) -> int | None:
    from rlkit.models.loading import TINY_NAMES

    if path in TINY_NAMES:
        from rlkit.models.tiny import VOCAB

        return len(VOCAB)
    try:
        from transformers import AutoConfig

        return getattr(AutoConfig.from_pretrained(path), "vocab_size", None)
    except (OSError, ValueError):
        return None


def check_same_vocabulary(policy_path: str, teacher_path: str, key: str) -> None:
    """Refuse a teacher whose tokenizer maps tokens to ids differently from the policy's, or whose output layer
    has another width; :class:`ConfigError` naming ``key`` and the first differing token."""
    from rlkit.models.loading import load_tokenizer

    teacher_path = _tokenizer_source(teacher_path)
    try:
        t_vocab = load_tokenizer(teacher_path).get_vocab()
    except (OSError, ValueError) as err:
        raise ConfigError(key, f"cannot load the teacher's tokenizer from {teacher_path!r}: {err}") from None
    p_vocab = load_tokenizer(_tokenizer_source(policy_path)).get_vocab()
    if t_vocab != p_vocab:
        diff = sorted(set(t_vocab.items()) ^ set(p_vocab.items()), key=str)
        tok = diff[0][0]
        raise ConfigError(key, f"the teacher {teacher_path!r} does not share the policy's tokenizer ({len(t_vocab)} vs "
                               f"{len(p_vocab)} tokens; e.g. {tok!r} has id {t_vocab.get(tok)} in the teacher's and "
                               f"{p_vocab.get(tok)} in the policy's): a teacher reference needs the same vocabulary")
    tw, pw = _vocab_width(teacher_path), _vocab_width(_tokenizer_source(policy_path))
    if tw is not None and pw is not None and tw != pw:
        raise ConfigError(key, f"the teacher {teacher_path!r} has vocab_size {tw}, the policy {pw}: their logits "
                               "cannot be compared token by token")
