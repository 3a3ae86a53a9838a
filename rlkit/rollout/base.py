"""The rollout-engine interface: prompts + sampling params -> token ids, text, per-token sampling log-probs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class SamplingParams:
    n: int = 1
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each token under the sampling distribution (after temperature/top-k/top-p)
    text: str
    finished: bool  # ended with EOS (False: cut at max_new_tokens)


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Completion]:
        """``n`` completions per prompt, grouped: outputs ``[i*n:(i+1)*n]`` belong to prompt ``i``."""

    def update_weights(self, state_dict: dict) -> None:
        """Load new policy weights (learner -> engine sync)."""
