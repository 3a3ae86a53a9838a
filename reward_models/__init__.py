"""Reward functions for rlkit: verifiable rule-based rewards and model-based scorers."""

from .base import Reward, RewardFn, SampleReward, check_batch
from .code_exec import CodeExecReward, CodeTestOutcome, extract_code, parse_tests
from .composite import CompositeResult, CompositeReward, RewardComponentError
from .exact_answer import ExactAnswer, normalize_answer
from .extract import DEFAULT_EOS_MARKERS, AnswerExtractor, parse_number, strip_eos, to_number
from .format_reward import FormatReward
from .length_penalty import LengthPenalty
from .model_scorer import ModelScorer
from .numeric_match import NumericMatch
from .registry import UnknownRewardError, available_rewards, build_reward, get_reward, register_reward
from .sandbox import SandboxResult, run_sandboxed

__all__ = [
    "DEFAULT_EOS_MARKERS",
    "AnswerExtractor",
    "CodeExecReward",
    "CodeTestOutcome",
    "CompositeResult",
    "CompositeReward",
    "ExactAnswer",
    "FormatReward",
    "LengthPenalty",
    "ModelScorer",
    "NumericMatch",
    "Reward",
    "RewardComponentError",
    "RewardFn",
    "SampleReward",
    "SandboxResult",
    "UnknownRewardError",
    "available_rewards",
    "build_reward",
    "check_batch",
    "extract_code",
    "get_reward",
    "normalize_answer",
    "parse_number",
    "parse_tests",
    "register_reward",
    "run_sandboxed",
    "strip_eos",
    "to_number",
]
