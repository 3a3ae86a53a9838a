"""The data the online trainer's roles pass one another, as plain dataclasses (pickled by Ray as they are).

rollout workers -> :class:`RolloutBatch` -> reward worker -> :class:`ScoredBatch`; reference workers ->
:class:`ReferenceOutput`; all of it -> :class:`TrainBatch` -> the learner's ``train_step``. No torch import here:
tensor fields (reference outputs) are typed ``Any``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from collections.abc import Mapping
from typing import Any


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
        return cls(
            rows=rows,
            prompt_ids=[c["prompt_ids"] for c in comps],
            completion_ids=[c["token_ids"] for c in comps],
            texts=[c["text"] for c in comps],
            logprobs=[c["logprobs"] for c in comps],
            group=[i for i in range(len(rows)) for _ in range(n)],
        )

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
    how many completions each reward function failed on; ``worker_restarts``: how often Ray restarted the reward
    worker since its previous batch (its process died)."""

    totals: list[float]
    components: dict[str, list[float]]
    failures: dict[str, float]
    correct: list[bool]
    worker_restarts: int = 0

    def metrics(self) -> dict[str, float]:
        """``reward/<name>`` (mean component), ``reward/failures/<name>`` and ``workers/reward_restarts``."""
        out = {f"reward/{k}": sum(v) / len(v) for k, v in self.components.items()}
        out.update({f"reward/failures/{k}": float(v) for k, v in self.failures.items()})
        out["workers/reward_restarts"] = float(self.worker_restarts)
        return out


@dataclass
class ReferenceOutput:
    """A reference model's outputs on a batch's completions (:meth:`rlkit.workers.reference.ReferenceWorker.compute`):
    ``logprobs`` ``[B, T]`` of the completion tokens at the sampling temperature, always; for exact divergences
    either ``logits`` ``[B, T, V]`` (divided by the temperature) or ``hidden`` ``[B, T, H]``, the final hidden states
    whose lm_head output those logits are, with ``head_version``. ``head`` (``{"weight", "bias", "version",
    "temperature"}``) travels with the first batch of each head version only; the learner keeps it."""

    logprobs: Any
    logits: Any = None
    hidden: Any = None
    head_version: int | None = None
    head: dict | None = None

    @classmethod
    def from_dict(cls, out: dict) -> ReferenceOutput:
        """From a reference worker's ``compute`` (a dict with those keys)."""
        return cls(
            logprobs=out["logprobs"],
            logits=out.get("logits"),
            hidden=out.get("hidden"),
            head_version=out.get("head_version"),
            head=out.get("head"),
        )


@dataclass
class RehearsalBatch:
    """DPH-RL rehearsal rows of a step (:meth:`rlkit.trainer.rehearsal.RehearsalSet.batch`): stored responses of the
    initial policy with their ``log pi_0`` per completion token (``ref_logprobs``) and the index of their prompt
    among the training prompts (``prompts``, for inspection; the learner does not read it)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    ref_logprobs: list[list[float]]
    prompts: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class LearnerNeeds:
    """What a learner's regularizers read, from which the driver plans its references once
    (:meth:`rlkit.trainer.reference_plan.ReferencePlan.from_needs`): reference keys whose sampled-token log-probs
    (``ref_logprobs``) or full logits (``ref_logits``) it needs, those of the latter sent as hidden states
    (``ref_hidden``, where ``V > H``), the spec of each reference by key (``references``), the references it computes
    itself (``served``; LoRA: ``initial``), and its regularizers' metric labels (``labels``; ``rehearsal``: those
    acting on DPH-RL's stored rows)."""

    ref_logprobs: tuple[str, ...] = ()
    ref_logits: tuple[str, ...] = ()
    ref_hidden: tuple[str, ...] = ()
    references: Mapping[str, dict] = field(default_factory=dict)
    served: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    rehearsal: tuple[str, ...] = ()


@dataclass
class TrainBatch:
    """One learner step's input (``train_step``). Per completion: prompt and completion token ids, the reward total
    (``scores``), whether it is correct, the rollout engine's log-probs, and ``group``, the prompt it answers (GRPO
    groups are ``group_size`` consecutive rows; the learner checks that ``group`` says so). ``refs``: the reference
    outputs by reference key; ``rehearsal``: DPH-RL's stored rows, trained on by their divergence only."""

    step: int
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    scores: list[float]
    correct: list
    rollout_logprobs: list[list[float]]
    refs: dict[str, ReferenceOutput] = field(default_factory=dict)
    rehearsal: RehearsalBatch | None = None
    group: list[int] | None = None

    def __len__(self) -> int:
        return len(self.completion_ids)

    def shard(self, rows: list[int]) -> TrainBatch:
        """The batch of the given rows (a data-parallel rank's part): per-completion lists are indexed; reference
        tensors ``[B, T, ...]`` are indexed and cut to the shard's padded completion length (what the learner's
        ``collate`` gives it). The step and the rehearsal rows are every shard's."""
        import torch

        t = max(1, max(len(self.completion_ids[i]) for i in rows))
        index = torch.tensor(rows, dtype=torch.long)
        per_sample: dict[str, Any] = {
            f: [getattr(self, f)[i] for i in rows]
            for f in ("prompt_ids", "completion_ids", "scores", "correct", "rollout_logprobs")
        }
        if self.group is not None:
            per_sample["group"] = [self.group[i] for i in rows]

        def cut(value):
            return value[index, :t] if torch.is_tensor(value) else value

        refs = {
            key: ReferenceOutput(**{f.name: cut(getattr(ref, f.name)) for f in fields(ref)})
            for key, ref in self.refs.items()
        }
        return replace(self, refs=refs, **per_sample)
