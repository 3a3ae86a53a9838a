"""Which reference models a run serves, and how: decided once, from the learner's needs, before the first step.

The learner says what its regularizers read (:class:`rlkit.types.LearnerNeeds`, from
:meth:`rlkit.workers.learner.LearnerCore.needs`): log-probs or full
logits of each reference, the spec of each reference, and which references it computes itself (LoRA: ``initial``,
its adapters disabled). :class:`ReferencePlan` turns that into fixed answers the loop only looks up: which reference
workers to spawn, what each sends (log-probs, full logits, or hidden states for the learner's fused head), and
whether it refreshes toward the policy (TR-DPO) or never changes (then an async prefetch may score a batch with it
early). :func:`resolve_reference` maps a spec to the checkpoints its worker loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rlkit.references import ReferenceSource, as_reference_config, reference_type
from rlkit.types import LearnerNeeds


@dataclass(frozen=True)
class ReferencePlan:
    """The references of a run. ``specs``: every reference spec by key (``regularizers[*].reference``, plus
    ``initial`` for ``eval.kl_to_initial``); ``spawned``: the keys served by reference workers, sorted (the order
    they are spawned and asked in); ``served``: keys the learner computes itself; ``logits``/``hidden``: keys whose
    full logits the learner needs, and those of them sent as hidden states instead (``V > H``); ``refresh``: key ->
    ``(every, rate)`` of TR-DPO references."""

    specs: Mapping[str, dict]
    spawned: tuple[str, ...]
    served: frozenset[str]
    logits: frozenset[str]
    hidden: frozenset[str]
    refresh: Mapping[str, tuple[int, float]]

    @classmethod
    def from_needs(cls, needs: LearnerNeeds, kl_to_initial: bool) -> ReferencePlan:
        """The plan for a learner's :class:`~rlkit.types.LearnerNeeds` and the recipe's ``eval.kl_to_initial``. A
        reference whose type the learner computes itself (``learner_side``: Lp-Reg's proxy) has no spec here."""
        specs = {
            k: s
            for k, s in needs.references.items()
            if not reference_type((s or {}).get("type", "initial")).learner_side
        }
        keys = set(needs.ref_logprobs) | set(needs.ref_logits)
        if kl_to_initial:
            keys.add("initial")
            specs.setdefault("initial", {"type": "initial"})
        served = frozenset(needs.served)
        refresh = {
            k: (s["refresh_every"], s.get("refresh_rate") or 1.0)
            for k, s in specs.items()
            if (s or {}).get("refresh_every")
        }
        return cls(
            specs=MappingProxyType(specs),
            spawned=tuple(sorted(keys - served)),
            served=served,
            logits=frozenset(needs.ref_logits),
            hidden=frozenset(needs.ref_hidden),
            refresh=MappingProxyType(refresh),
        )

    @property
    def fixed(self) -> tuple[str, ...]:
        """Spawned references that never change: they may score a batch as soon as it is generated."""
        return tuple(k for k in self.spawned if k not in self.refresh)

    @property
    def refreshing(self) -> tuple[str, ...]:
        """Spawned references that refresh toward the policy (TR-DPO): a training checkpoint stores their weights."""
        return tuple(k for k in self.spawned if k in self.refresh)

    def sends(self, key: str) -> str:
        """What reference ``key`` sends the learner: ``"hidden"``, ``"logits"`` or ``"logprobs"``."""
        if key in self.hidden:
            return "hidden"
        return "logits" if key in self.logits else "logprobs"

    def due(self, step: int) -> dict[str, float]:
        """``{key: rate}`` of the references refreshed after optimizer step ``step``, in spawn order."""
        return {k: self.refresh[k][1] for k in self.spawned if k in self.refresh and step % self.refresh[k][0] == 0}

    def initial_source(self) -> str | None:
        """Who serves the initial policy's log-probs (evaluation's KL, rehearsal): ``"worker"``, ``"learner"``
        or None."""
        if "initial" in self.spawned:
            return "worker"
        return "learner" if "initial" in self.served else None


def reference_file(key: str) -> str:
    """Where a training checkpoint keeps TR-DPO reference ``key``'s refreshed weights (relative to it)."""
    if not key or "/" in key or "\\" in key or key.startswith("."):
        raise ValueError(f"reference key {key!r} cannot name a checkpoint file")
    return f"references/{key}.safetensors"


def resolve_reference(
    ref: dict, init_paths: list[str], out: Path, prepared: Mapping[str, Any] | None = None
) -> ReferenceSource:
    """What a reference worker loads for a spec (kind, checkpoint paths, weights, options), from its registered type
    (:meth:`rlkit.references.ReferenceType.source`). ``sft:<i>`` names the i-th SFT warm start; ``prepared``
    holds each type's set-up result by :meth:`~rlkit.references.ReferenceType.identity`
    (:func:`rlkit.trainer.references.prepare_references`: e.g. a trained ``sft:tiny`` teacher's path)."""
    cfg = as_reference_config(ref)
    kind = reference_type(cfg.type)
    return kind.source(cfg, init_paths, (prepared or {}).get(kind.identity(cfg)))
