"""Reward functions for rlkit: verifiable rule-based rewards and model-based scorers."""

from .base import Reward, RewardFn, SampleReward, check_batch
from .composite import CompositeResult, CompositeReward
from .exact_answer import ExactAnswer, normalize_answer
from .extract import DEFAULT_EOS_MARKERS, AnswerExtractor, parse_number, strip_eos, to_number
from .format_reward import FormatReward
from .length_penalty import LengthPenalty
from .model_scorer import ModelScorer
from .numeric_match import NumericMatch
from .registry import UnknownRewardError, available_rewards, build_reward, get_reward, register_reward

__all__ = [
    "DEFAULT_EOS_MARKERS",
    "AnswerExtractor",
    "CompositeResult",
    "CompositeReward",
    "ExactAnswer",
    "FormatReward",
    "LengthPenalty",
    "ModelScorer",
    "NumericMatch",
    "Reward",
    "RewardFn",
    "SampleReward",
    "UnknownRewardError",
    "available_rewards",
    "build_reward",
    "check_batch",
    "get_reward",
    "normalize_answer",
    "parse_number",
    "register_reward",
    "strip_eos",
    "to_number",
]
