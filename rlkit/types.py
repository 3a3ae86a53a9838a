"""The data the online trainer's roles pass one another, as plain dataclasses (pickled by Ray as they are).

rollout workers -> :class:`RolloutBatch` -> reward worker -> :class:`ScoredBatch`; reference workers ->
:class:`ReferenceOutput`; all of it -> :class:`TrainBatch` -> the learner's ``train_step``. No torch import here:
tensor fields (reference outputs) are typed ``Any``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RolloutBatch:
    """One step's completions: ``n`` per prompt of ``rows`` (``{"prompt", "answer"}``), in prompt order.
    Per completion: its prompt's token ids, its own token ids, text and sampling log-probs, and ``group``, the index
    in ``rows`` of the prompt it answers (GRPO's group)."""

    rows: list[dict]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    logprobs: list[list[float]]
    group: list[int]

    @classmethod
    def from_completions(cls, rows: list[dict], comps: list[dict], n: int) -> RolloutBatch:
        """From :func:`rlkit.trainer.evaluate.generate`'s completions (dicts of :class:`rlkit.rollout.Completion`):
        ``n`` per row, grouped by row, in row order."""
        if len(comps) != n * len(rows):
            raise ValueError(f"{len(comps)} completions for {len(rows)} prompts x {n} samples")
        return cls(rows=rows, prompt_ids=[c["prompt_ids"] for c in comps],
                   completion_ids=[c["token_ids"] for c in comps], texts=[c["text"] for c in comps], logprobs=[c["logprobs"] for c in comps],
                   group=[i for i in range(len(rows)) for _ in range(n)])

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def prompts(self) -> list[str]:
        """The prompt text of each completion."""
        return [self.rows[g]["prompt"] for g in self.group]

    @property
    def answers(self) -> list[str]:
        """The reference answer of each completion's prompt."""
        return [self.rows[g]["answer"] for g in self.group]


@dataclass
class ScoredBatch:
    """The reward worker's verdict on a :class:`RolloutBatch`: per completion the weighted ``totals``, each reward
    function's ``components``, and ``correct`` (the first component, the verifier, gives full marks); ``failures``:
    how many completions each reward function failed on."""

    totals: list[float]
    components: dict[str, list[float]]
    failures: dict[str, float]
    correct: list[bool]

    def metrics(self) -> dict[str, float]:
        """``reward/<name>`` (mean component) and ``reward/failures/<name>``."""
        out = {f"reward/{k}": sum(v) / len(v) for k, v in self.components.items()}
        out.update({f"reward/failures/{k}": float(v) for k, v in self.failures.items()})
        return out
