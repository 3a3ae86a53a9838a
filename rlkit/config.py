"""Recipes: YAML -> typed, validated config; dotted ``key=value`` overrides; errors that name the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rlkit._config import ConfigError, StrictModel, validate_model
from rlkit._yaml import _parse_value, apply_overrides, deep_merge, load_yaml  # noqa: F401 (re-exported)


class LoRAConfig(StrictModel):
    """LoRA adapters through peft (filled in by the LoRA work)."""

    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class ModelConfig(StrictModel):
    """``name_or_path``: ``tiny`` (built locally, no download), a local directory or a hub id."""

    name_or_path: str = "tiny"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    #: train LoRA adapters (peft) instead of the full model; ``None``: full fine-tuning
    lora: LoRAConfig | None = None


class DataConfig(StrictModel):
    """Prompts with reference answers. ``source``: ``arithmetic`` (the built-in synthetic task, configured by
    ``params``) or a jsonl/json/parquet file, a ``save_to_disk`` directory, or a hub id."""

    source: str = "arithmetic"
    params: dict[str, Any] = Field(default_factory=dict)
    eval_source: str | None = None
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    max_train_prompts: int | None = Field(None, gt=0)
    max_eval_prompts: int | None = Field(None, gt=0)
    #: wrap each prompt as a user turn with the tokenizer's chat template (instruct models)
    chat_template: bool = False


class SFTConfig(StrictModel):
    """Warm start with TRL's ``SFTTrainer`` on the task's reference completions."""

    enabled: bool = True
    max_steps: int = Field(300, gt=0)
    learning_rate: float = Field(3e-3, gt=0)
    batch_size: int = Field(32, gt=0)
    num_examples: int = Field(4000, gt=0)
    label_noise: float = Field(0.0, ge=0, le=1)
    noise: Literal["neighbor", "dropped_carry"] = "neighbor"
    seed: int = 0
    #: SFT data for a custom ``data.source``: a jsonl/parquet/dataset dir with prompt + completion columns
    data: str | None = None
    completion_column: str = "completion"
    #: where warm starts are kept; runs with the same model/data/sft settings and seed share one (``rlkit ablate``
    #: points every cell here). ``None``: ``<output_dir>/sft``.
    cache_dir: str | None = None


class RolloutConfig(StrictModel):
    engine: Literal["transformers", "vllm"] = "transformers"
    num_workers: int = Field(1, gt=0)
    max_new_tokens: int = Field(16, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    batch_size: int = Field(256, gt=0)


class GRPOConfig(StrictModel):
    steps: int = Field(40, gt=0)
    prompts_per_step: int = Field(16, gt=0)
    group_size: int = Field(8, ge=2)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    clip_low: float = Field(0.2, ge=0, lt=1)
    clip_high: float = Field(0.28, ge=0)
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "drgrpo"] = "token-mean"
    advantage: Literal["grpo", "drgrpo", "rloo"] = "grpo"
    epochs: int = Field(1, gt=0)
    minibatches: int = Field(1, gt=0)
    #: stop after this many consecutive steps in which every update had a non-finite loss or gradient (0: never)
    max_bad_steps: int = Field(5, ge=0)
    entropy_coef: float = Field(0.0, ge=0)


class PPOConfig(GRPOConfig):
    """PPO through the same Ray loop as GRPO (filled in by the PPO work)."""

    group_size: int = Field(1, ge=1)


class DPOConfig(StrictModel):
    """Offline DPO / f-DPO on a preference dataset (filled in by the DPO work)."""


class LearnerConfig(StrictModel):
    """Learner placement: ``num_workers`` data-parallel learner actors in one torch.distributed group."""

    num_workers: int = Field(1, gt=0)


class RewardSpec(StrictModel):
    """One term of the reward: a name from ``reward_models`` with a weight and keyword params (``key`` names the
    component in metrics; needed only when the same reward appears twice)."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)
    key: str | None = None
    #: what a sample gets when this reward raises or times out: ``zero`` (score 0, counted in metrics) or ``fail``
    on_error: Literal["zero", "fail"] = "zero"
    #: wall-clock limit per call in seconds (None: no limit)
    timeout_s: float | None = Field(None, gt=0)


class EvalConfig(StrictModel):
    num_prompts: int = Field(64, gt=0)
    n_samples: int = Field(8, gt=0)
    ks: list[int] = Field(default_factory=lambda: [1, 4, 8])
    temperature: float = Field(1.0, gt=0)
    before: bool = True
    #: measure KL(policy || initial policy) on the eval samples and log its k3 estimate at every training step
    #: (starts a reference worker for the initial model if no regularizer has one)
    kl_to_initial: bool = True

    @model_validator(mode="after")
    def _ks(self):
        bad = [k for k in self.ks if k < 1 or k > self.n_samples]
        if bad:
            raise ValueError(f"every k in 'ks' must be in [1, n_samples={self.n_samples}]; bad: {bad}")
        return self


class RayConfig(StrictModel):
    """``address``: ``None`` starts a local cluster; ``auto`` or ``ray://host:port`` joins an existing one."""

    address: str | None = None
    num_cpus: int | None = Field(None, gt=0)
    cpus_per_rollout_worker: float = Field(0.5, ge=0)
    cpus_per_learner: float = Field(0.5, ge=0)
    cpus_per_reference: float = Field(0.25, ge=0)
    cpus_per_reward: float = Field(0.25, ge=0)
    torch_threads: int = Field(2, gt=0)


class LoggingConfig(StrictModel):
    tensorboard: bool = True
    plot: bool = True
    print_every: int = Field(5, gt=0)


class CheckpointConfig(StrictModel):
    """``save_every``: a full training checkpoint (weights, optimizer, RNG, data position, controller state) every
    N steps into ``<output_dir>/checkpoints/step_<N>``, the last ``keep`` kept; ``--resume`` continues from it."""

    save_every: int = Field(0, ge=0)
    keep: int = Field(2, gt=0)
    save_final: bool = True


class SweepConfig(StrictModel):
    """An ablation grid for ``rlkit ablate``: ``grid`` maps a dotted recipe key to the values it takes (every
    combination is a cell); each cell runs once per seed."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    parallel: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _non_empty(self):
        empty = [k for k, v in self.grid.items() if not v]
        if empty:
            raise ValueError(f"grid key {empty[0]!r} has no values")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        return self


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
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="numeric_match")])
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    #: continue from the last complete checkpoint in ``<output_dir>/checkpoints`` (``rlkit train ... --resume``)
    resume: bool = False
    #: only read by ``rlkit ablate`` (``rlkit train`` ignores it)
    sweep: SweepConfig | None = None


def build_recipe(data: dict) -> Recipe:
    """Validate a recipe dict, including the regularizer and reward names (errors name the key path)."""
    recipe = validate_model(Recipe, data)
    from rlkit.regularizers import build_regularizers, check_objective

    regs = build_regularizers(recipe.regularizers, "regularizers")
    check_objective(regs, recipe.algorithm)
    _check_rewards(recipe.rewards)
    return recipe


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
