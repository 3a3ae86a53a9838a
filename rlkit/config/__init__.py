"""Recipes: YAML -> typed, validated config; dotted ``key=value`` overrides; errors that name the key path.

:mod:`.sections` holds one pydantic model per YAML section, :mod:`.recipe` the whole recipe and its cross-section
checks; both are re-exported here (``from rlkit.config import load_recipe, GRPOConfig``)."""

from rlkit._config import ConfigError
from rlkit._yaml import _parse_value, apply_overrides, deep_merge, load_yaml

from .recipe import Recipe, build_recipe, load_recipe, resolve_placement
from .sections import (
    CheckpointConfig,
    DataConfig,
    DPOConfig,
    EvalConfig,
    GRPOConfig,
    LearnerConfig,
    LoggingConfig,
    LoRAConfig,
    ModelConfig,
    PPOConfig,
    RayConfig,
    RehearsalConfig,
    RewardSpec,
    RolloutConfig,
    SFTConfig,
    SweepConfig,
    VLLMOptions,
)

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DPOConfig",
    "EvalConfig",
    "GRPOConfig",
    "LearnerConfig",
    "LoggingConfig",
    "LoRAConfig",
    "ModelConfig",
    "PPOConfig",
    "RayConfig",
    "Recipe",
    "RehearsalConfig",
    "RewardSpec",
    "RolloutConfig",
    "SFTConfig",
    "SweepConfig",
    "VLLMOptions",
    "_parse_value",
    "apply_overrides",
    "build_recipe",
    "deep_merge",
    "load_recipe",
    "load_yaml",
    "resolve_placement",
]
