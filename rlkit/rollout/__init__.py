"""Rollout engines: ``transformers`` (CPU default) and, later, vLLM; both follow :class:`RolloutEngine`."""

from .base import Completion, RolloutEngine, SamplingParams
from .hf import TransformersEngine

__all__ = ["Completion", "RolloutEngine", "SamplingParams", "TransformersEngine"]
