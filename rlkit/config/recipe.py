"""The whole recipe: :class:`Recipe` (the sections of :mod:`rlkit.config.sections` plus the regularizer specs),
cross-section checks, placement, and :func:`load_recipe` (YAML + dotted overrides -> a validated recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rlkit._config import ConfigError, StrictModel, validate_model
from rlkit._yaml import ALGORITHM_SECTIONS, apply_overrides, load_yaml

from .sections import (
    CheckpointConfig,
    DataConfig,
    DPOConfig,
    EvalConfig,
    LearnerConfig,
    LoggingConfig,
    ModelConfig,
    PPOConfig,
    RayConfig,
    RehearsalConfig,
    RewardSpec,
    RolloutConfig,
    SFTConfig,
    SweepConfig,
    GRPOConfig,
)


class Recipe(StrictModel):
    output_dir: str = "runs/quickstart"
    seed: int = 0
    algorithm: Literal["grpo", "ppo", "dpo"] = "grpo"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    regularizers: Any = "kl_k3"
    #: DPH-RL rehearsal on responses pre-sampled from the initial policy; needed by ``samples: reference``
    #: regularizers (see :class:`RehearsalConfig`)
    rehearsal: RehearsalConfig | None = None
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="numeric_match")])
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    #: continue from the last complete checkpoint in ``<output_dir>/checkpoints`` (``rlkit train ... --resume``)
    resume: bool = False
    #: with ``resume``: continue even when training-defining keys changed since the checkpoint (they are printed)
    allow_recipe_change: bool = False
    #: only read by ``rlkit ablate`` (``rlkit train`` ignores it)
    sweep: SweepConfig | None = None
    #: modules of your own imported before validation, each registering components (a module name or a ``.py``
    #: path; see :mod:`rlkit.plugins` and docs/extending.md)
    plugins: list[str] = Field(default_factory=list)


def build_recipe(data: dict) -> Recipe:
    """Validate a recipe dict, including the regularizer and reward names (errors name the key path)."""
    recipe = validate_model(Recipe, data)
    from rlkit.plugins import load_plugins
    from rlkit.regularizers import build_regularizers, check_objective

    load_plugins(recipe.plugins)
    regs = build_regularizers(recipe.regularizers, "regularizers")
    check_objective(regs, recipe.algorithm)
    _check_algorithm(recipe)
    _check_rehearsal(recipe)
    _check_rewards(recipe.rewards)
    if recipe.model.lora is not None and recipe.algorithm != "grpo":
        raise ConfigError("model.lora", f"LoRA is implemented for algorithm 'grpo' only, not {recipe.algorithm!r}")
    if recipe.model.lora is not None and recipe.learner.num_workers > 1:
        raise ConfigError(
            "model.lora",
            "LoRA with data-parallel learners (learner.num_workers > 1) is not supported "
            "yet: use learner.num_workers=1",
        )
    _check_sections(recipe)
    if recipe.ray.mode == "auto":
        recipe.ray.mode = resolve_placement(recipe)
        recipe.ray._chosen_by = placement_reason(recipe)
    if recipe.ray.mode == "inprocess" and recipe.algorithm != "dpo":
        _check_inprocess(recipe)
    return recipe


def _check_sections(recipe: Recipe) -> None:
    """A recipe may not set the section of an algorithm it does not run (``grpo:`` in a PPO recipe, ``dpo.beta``
    as an override of a GRPO one): nothing would read those keys, so they are refused rather than dropped. (A
    section inherited through ``extends:`` from a recipe of another algorithm is not the child's:
    :func:`rlkit._yaml.inherit` leaves it behind.)"""
    for section in ALGORITHM_SECTIONS:
        if section == recipe.algorithm or section not in recipe.model_fields_set:
            continue
        cfg = getattr(recipe, section)
        default = type(cfg)()
        # a key set to its default loses nothing when ignored: `grpo: {}`, and a run's own recipe.yaml, which
        # records every section (rlkit eval reads it back)
        keys = sorted(k for k in cfg.model_fields_set if getattr(cfg, k) != getattr(default, k))
        if not keys:
            continue
        shown = ", ".join(f"{section}.{k}" for k in keys)
        raise ConfigError(
            section,
            f"sets {shown}, but algorithm {recipe.algorithm!r} reads its settings from `{recipe.algorithm}:` only "
            f"and would ignore them: move them to `{recipe.algorithm}:` or remove them (an override "
            f"`{section}={{}}` drops the section)",
        )


def _check_algorithm(recipe: Recipe) -> None:
    """The online algorithm's advantage estimator and policy loss are registered names, the estimator of the right
    kind (PPO: critic-based; GRPO: group-relative)."""
    if recipe.algorithm not in ("grpo", "ppo"):
        return
    from rlkit.algorithms import ADVANTAGES, POLICY_LOSSES

    alg = recipe.algorithm
    cfg = getattr(recipe, alg)
    estimator = ADVANTAGES.get(cfg.advantage, f"{alg}.advantage")
    if estimator.needs_values != (alg == "ppo"):
        kinds = [n for n in ADVANTAGES.names() if ADVANTAGES.get(n).needs_values == (alg == "ppo")]
        kind = "a critic-based" if estimator.needs_values else "a group-relative"
        raise ConfigError(
            f"{alg}.advantage", f"{cfg.advantage!r} is {kind} estimator; algorithm {alg!r} takes {', '.join(kinds)}"
        )
    POLICY_LOSSES.get(cfg.policy_loss, f"{alg}.policy_loss").check(cfg, alg)


def resolve_placement(recipe: Recipe) -> Literal["actors", "inprocess"]:
    """What ``ray.mode: auto`` becomes: ``inprocess`` when every role fits this process (the conditions
    :func:`_check_inprocess` enforces), else ``actors``."""
    return "actors" if any(bad for _, bad, _ in _inprocess_conflicts(recipe)) else "inprocess"


def placement_reason(recipe: Recipe) -> str:
    """Why ``ray.mode: auto`` resolved as it did, for the run's header: ``the job fits one process``, or the first
    setting that needs Ray actors."""
    for key, bad, _ in _inprocess_conflicts(recipe):
        if bad:
            return f"ray.mode auto: {key}={_shown(recipe, key)} needs Ray actors"
    return "ray.mode auto: the job fits one process"


def _shown(recipe: Recipe, key: str):
    section, field = key.split(".")
    return getattr(getattr(recipe, section), field)


def _check_rehearsal(recipe: Recipe) -> None:
    """``samples: reference`` regularizers need the rehearsal set (DPH-RL) and a rehearsal set needs them."""
    from rlkit.regularizers import build_regularizers
    from rlkit.regularizers.weightings import weighting_class
    from rlkit.objectives.rehearsal import on_reference_samples

    specs = recipe.regularizers
    specs = [] if specs is None else [specs] if isinstance(specs, (str, dict)) else list(specs)
    paths = []
    for i, spec in enumerate(specs):
        for reg in build_regularizers([spec]):
            if on_reference_samples(reg):
                paths.append(f"regularizers[{i}]")
                ref = reg.cfg.reference
                if ref.type != "initial" or ref.refresh_every:
                    raise ConfigError(
                        f"regularizers[{i}].reference",
                        "rehearsal responses are sampled from the "
                        "initial policy: samples 'reference' needs reference 'initial' (no refresh)",
                    )
                if weighting_class(reg.cfg.weighting.type).needs_rewards:
                    raise ConfigError(
                        f"regularizers[{i}].weighting",
                        f"'{reg.cfg.weighting.type}' weights need "
                        "advantages/accuracy, which rehearsal responses do not have",
                    )
    if paths and recipe.rehearsal is None:
        raise ConfigError(
            f"{paths[0]}.samples",
            "samples 'reference' needs responses pre-sampled from the initial "
            "policy: add a `rehearsal:` section (DPH-RL, see recipes/grpo_dph.yaml) or use samples "
            "'policy'",
        )
    if recipe.rehearsal is not None:
        if not paths:
            raise ConfigError(
                "rehearsal",
                "no regularizer has samples 'reference', so the rehearsal set would carry "
                "no loss: add one (e.g. {name: forward_kl, samples: reference}) or remove `rehearsal:`",
            )
        if recipe.algorithm != "grpo":
            raise ConfigError(
                "rehearsal", f"rehearsal is implemented for algorithm 'grpo' only, not {recipe.algorithm!r}"
            )
        if recipe.learner.num_workers > 1:
            raise ConfigError(
                "rehearsal",
                "rehearsal with data-parallel learners (learner.num_workers > 1) is not "
                "supported yet: use learner.num_workers=1",
            )


def _check_inprocess(recipe: Recipe) -> None:
    """``ray.mode: inprocess`` has one process, one learner and one rollout engine sharing the policy module."""
    for key, bad, why in _inprocess_conflicts(recipe):
        if bad:
            raise ConfigError(key, f"{why} with ray.mode=inprocess (or set ray.mode=actors)")


def _inprocess_conflicts(recipe: Recipe) -> tuple[tuple[str, bool, str], ...]:
    return (
        ("ray.address", recipe.ray.address is not None, "joins a Ray cluster; in-process mode uses no Ray"),
        (
            "rollout.engine",
            recipe.rollout.engine != "transformers",
            "must be 'transformers' (it generates with the learner's module)",
        ),
        ("rollout.num_workers", recipe.rollout.num_workers != 1, "must be 1"),
        ("learner.num_workers", recipe.learner.num_workers != 1, "must be 1"),
    )


def _check_rewards(rewards: list[RewardSpec]) -> None:
    from reward_models import CompositeReward

    try:
        CompositeReward([r.model_dump(exclude_defaults=True) for r in rewards])
    except (ValueError, KeyError, TypeError) as err:
        msg = str(err).strip("'\"")
        raise ConfigError("", msg if msg.startswith("rewards") else f"rewards: {msg}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply dotted overrides, validate. Raises :class:`ConfigError` on any problem."""
    return build_recipe(apply_overrides(load_yaml(path), overrides or []))
