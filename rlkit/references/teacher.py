"""The ``teacher`` reference: another (larger) model sharing the policy's tokenizer (KDRL, arXiv 2506.02208).

``model`` is its path or hub id, or ``sft:tiny``: an SFT warm start, trained by the job, of the tiny model with
``tiny_config`` overrides (e.g. ``{hidden_size: 256, num_hidden_layers: 6}``) and the recipe's ``sft`` section updated
by ``sft``. Either way the teacher must share the policy's tokenizer: a divergence between ``pi(y_t | .)`` and
``pi_teacher(y_t | .)`` compares the probabilities of the same token ids, so the vocabularies (token -> id) must be
equal, and for full-logit divergences so must the logits' width (:func:`check_same_vocabulary`, at set-up).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from rlkit._config import ConfigError

from .registry import ReferenceConfig, ReferenceSetup, ReferenceSource, ReferenceType

TEACHER_SFT = "sft:tiny"


class TeacherConfig(ReferenceConfig):
    type: Literal["teacher"] = "teacher"
    model: str | None = None
    tiny_config: dict[str, Any] | None = None
    sft: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self):
        if not self.model:
            raise ValueError("a teacher reference needs 'model': the teacher's path or hub id")
        if (self.tiny_config is not None or self.sft is not None) and self.model != TEACHER_SFT:
            raise ValueError("'tiny_config'/'sft' only apply to a teacher with model 'sft:tiny'")
        if self.sft:
            _check_sft_overrides(self.sft)
        return self


def _check_sft_overrides(sft: dict[str, Any]) -> None:
    """The teacher's ``sft`` overrides: keys of the recipe's ``sft`` section (not ``enabled``/``cache_dir``), valid
    values; the first problem as ``'sft.<key>': <reason>``."""
    from rlkit.config.sections import SFTConfig

    bad = sorted(set(sft) - set(SFTConfig.model_fields) | {"enabled", "cache_dir"} & set(sft))
    if bad:
        raise ValueError(
            f"'sft' key {bad[0]!r} cannot be set for the teacher (allowed: keys of the sft "
            "section except enabled and cache_dir)"
        )
    try:
        SFTConfig.model_validate(sft)
    except ValueError as err:  # pydantic's ValidationError: keep the key and the reason only
        first = err.errors()[0] if hasattr(err, "errors") else {"loc": (), "msg": str(err)}
        raise ValueError(f"'sft.{'.'.join(map(str, first['loc']))}': {first['msg']}") from None


def teacher_id(ref: dict) -> str:
    """A stable name of a teacher spec (its model plus, for ``sft:tiny``, the tiny config and SFT overrides)."""
    return json.dumps({k: ref.get(k) for k in ("model", "tiny_config", "sft")}, sort_keys=True, default=str)


class TeacherReference(ReferenceType[TeacherConfig]):
    """Set-up: an ``sft:tiny`` teacher is trained (or reused) through the trainer's ``train_sft``; every teacher's
    tokenizer is checked against the policy's. Served from the resulting model path; never refreshed (it is not
    the policy's architecture in general)."""

    Config = TeacherConfig

    @classmethod
    def identity(cls, cfg: TeacherConfig) -> str:
        return teacher_id(cfg.model_dump())

    @classmethod
    def prepare(cls, cfg: TeacherConfig, setup: ReferenceSetup, path: str) -> str:
        """The teacher's model path, its tokenizer checked: ``sft:tiny`` trained (or reused) first."""
        model = cfg.model
        assert model is not None  # TeacherConfig's validator refuses a teacher without a model
        if model == TEACHER_SFT:
            if setup.train_sft is None:
                raise ConfigError(path, "an 'sft:tiny' teacher is trained by the job, which gave no SFT trainer")
            model = setup.train_sft(cfg.model_dump(), path)
        check_same_vocabulary(setup.init_paths[0], model, f"{path}.model")
        return model

    @classmethod
    def source(cls, cfg: TeacherConfig, init_paths: list[str], prepared: Any = None) -> ReferenceSource:
        assert cfg.model is not None  # TeacherConfig's validator refuses a teacher without a model
        return ReferenceSource("teacher", [prepared or cfg.model])


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
        raise ConfigError(
            key,
            f"the teacher {teacher_path!r} does not share the policy's tokenizer ({len(t_vocab)} vs "
            f"{len(p_vocab)} tokens; e.g. {tok!r} has id {t_vocab.get(tok)} in the teacher's and "
            f"{p_vocab.get(tok)} in the policy's): a teacher reference needs the same vocabulary",
        )
    tw, pw = _vocab_width(teacher_path), _vocab_width(_tokenizer_source(policy_path))
    if tw is not None and pw is not None and tw != pw:
        raise ConfigError(
            key,
            f"the teacher {teacher_path!r} has vocab_size {tw}, the policy {pw}: their logits "
            "cannot be compared token by token",
        )
