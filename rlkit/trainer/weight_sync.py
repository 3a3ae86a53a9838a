"""After each optimizer step: the new policy weights to the rollout engines, TR-DPO references refreshed.

One strategy per run, chosen once by :func:`make_weight_sync`:

* :class:`SharedModuleSync` (``ray.mode: inprocess``, the engine in the learner's dtype, no async rollouts): the
  rollout engine generates with the learner's own module, so there is nothing to send; only the version moves on.
* :class:`ObjectStoreSync` (Ray actors): a copy of the learner's state dict goes to every rollout worker through the
  object store; a worker that died in between is restarted by Ray and sent the weights again.
* :class:`InProcessCopySync` (in-process, the engine keeps its own copy: ``grpo.async_rollout`` or a
  ``rollout.dtype`` other than the learner's): the engine copies (and casts) the learner's tensors straight into its
  own, with no intermediate clone of the state dict.
* :class:`LearnerGroupSync` (``learner.num_workers > 1``): the same transfer, of rank 0's weights (every rank holds
  bitwise the same).

Each keeps the latest weights and their version, so a restarted rollout worker can be given them again
(:meth:`WeightSync.resend`, the ``on_restart`` of :func:`rlkit.trainer.evaluate.generate`).
"""

from __future__ import annotations

from rlkit.workers.local import get, ray_error

from .faults import call_when_alive
from .reference_plan import ReferencePlan


class WeightSync:
    """The weights the rollout engines hold (an object ref, or None before the first sync) and their version."""

    def __init__(self, learner, rollout: list, references: dict, plan: ReferencePlan, version: int):
        self.learner, self.rollout, self.references, self.plan = learner, rollout, references, plan
        self.weights = None
        self.version = version

    def resend(self, worker) -> None:
        """Give a restarted rollout worker the current weights (nothing before the first sync)."""
        if self.weights is not None:
            call_when_alive(lambda: worker.update_weights.remote(self.weights, self.version))

    def after_step(self, version: int) -> None:
        """Optimizer step ``version`` is done: rollout engines and due references get the new weights."""
        raise NotImplementedError

    def _refresh_references(self, step: int, weights) -> list[str]:
        """TR-DPO refresh: after optimizer step ``step``, every reference whose spec has ``refresh_every`` dividing
        ``step`` moves toward the policy, ``theta_ref <- (1 - a) theta_ref + a theta`` with ``a = refresh_rate``
        (default 1). ``weights``: the learner's weights (an object ref), or a function making them, called only when
        a reference is due (in-process: ``learner.get_weights.remote``). Returns the refreshed keys.

        A training checkpoint stores each refreshing reference's weights and ``--resume`` restores them
        (:meth:`rlkit.trainer.online.OnlineTrainer.checkpoint`); a reference actor restarted by Ray mid-run starts
        again from the reference's original weights (it says so)."""
        due = self.plan.due(step)
        if due and callable(weights):
            weights = get(weights())
        for key, rate in due.items():
            get(self.references[key].refresh.remote(weights, rate))
        return list(due)


class SharedModuleSync(WeightSync):
    """In-process: the rollout engine is the learner's module; the weights are never copied to it."""

    def after_step(self, version: int) -> None:
        self.version = version
        self._refresh_references(version, self.learner.get_weights.remote)
        self.rollout[0].update_weights.remote(None, version)


class ObjectStoreSync(WeightSync):
    """The learner's weights to every rollout worker, re-sent to one that died during the sync."""

    def after_step(self, version: int) -> None:
        self.weights, self.version = self.learner.get_weights.remote(), version
        self._refresh_references(version, self.weights)
        for i, worker in enumerate(self.rollout):
            try:
                get(worker.update_weights.remote(self.weights, version))
            except ray_error():  # died in between: Ray restarts it; send again
                print(f"rollout worker {i} died during the weight sync: re-sending weights", flush=True)
                self.resend(worker)


class InProcessCopySync(WeightSync):
    """In-process, the engine holding its own copy: it reads the learner's live tensors and copies them into its
    weights (``load_state_dict``, casting to its dtype) while the learner is idle; the driver makes both calls in turn,
    and the local actor's lock keeps the copy out of a running ``generate``. Nothing is kept for a re-send: an
    in-process worker is never restarted."""

    def after_step(self, version: int) -> None:
        self.version = version
        weights = self.learner.get_weights.remote(copy=False)
        self._refresh_references(version, weights)
        for worker in self.rollout:
            get(worker.update_weights.remote(weights, version))


class LearnerGroupSync(ObjectStoreSync):
    """Data-parallel learners: rank 0's weights (:class:`rlkit.workers.learner_group.LearnerGroup` answers
    ``get_weights`` from rank 0), sent as :class:`ObjectStoreSync` sends one learner's."""


def make_weight_sync(
    shared: bool,
    group: bool,
    learner,
    rollout: list,
    references: dict,
    plan: ReferencePlan,
    version: int,
    inprocess: bool = False,
) -> WeightSync:
    """The strategy for a run: ``shared`` (the rollout engine is the learner's module), ``group`` (data-parallel
    learners), ``inprocess`` (an engine with its own copy in this process), else the object store."""
    if shared:
        cls: type[WeightSync] = SharedModuleSync
    elif group:
        cls = LearnerGroupSync
    else:
        cls = InProcessCopySync if inprocess else ObjectStoreSync
    return cls(learner, rollout, references, plan, version)
