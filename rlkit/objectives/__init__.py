"""Pure losses: each takes tensors (and regularizers) and returns ``(loss, metrics)``."""

from .aggregation import AGGREGATIONS, aggregate, masked_mean
from .dpo import DPO_LOSS_TYPES, dpo_loss, fdpo_loss, preference_ece
from .policy import clipped_surrogate, grpo_loss, policy_loss, tis_weights
from .ppo import ppo_loss, reward_penalty, token_level_rewards, value_loss

__all__ = [
    "AGGREGATIONS",
    "DPO_LOSS_TYPES",
    "aggregate",
    "clipped_surrogate",
    "dpo_loss",
    "fdpo_loss",
    "preference_ece",
    "grpo_loss",
    "masked_mean",
    "policy_loss",
    "ppo_loss",
    "reward_penalty",
    "tis_weights",
    "token_level_rewards",
    "value_loss",
]
