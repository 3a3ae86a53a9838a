"""Data-parallel learners: ``learner.num_workers`` learner actors in one ``torch.distributed`` process group.

:class:`LearnerGroup` stands where the driver would hold one learner actor and answers the same calls
(``group.train_step.remote(batch)`` with a :class:`rlkit.types.TrainBatch`, etc.):

* ``train_step``: the batch is split into ``num_workers`` equal shards of whole GRPO groups (a group is never split:
  its advantages are computed from its own samples); every worker runs :meth:`LearnerCore.train_step` on its shard.
* Before every optimizer step the workers all-reduce their gradients (:class:`GradSync`, bucketed, summed), so
  every replica applies the same update and all replicas keep **bitwise identical** parameters (the reduced
  gradients are the same bytes on every rank; clipping and AdamW are deterministic on them).
* ``get_weights``, ``save``, ``needs`` and ``state`` go to rank 0 only; ``load_training_state`` goes to every rank.

**The global loss.** The loss of one update is an aggregate over the minibatch (``grpo.aggregation``). With
``token-mean`` it is ``sum(per-token loss) / n`` over the whole minibatch; the mean of per-shard token-means is
*not* that when shards hold different numbers of tokens. So each rank scales its gradient by its share of the
global normalizer before the all-reduce sum: ``n_k / sum_j n_j`` (token-mean) or ``b_k / sum_j b_j`` (the
sequence-mean modes, and ``drgrpo``, whose length constant ``grpo.norm_length`` is the same on every rank). The
summed gradient is then the gradient of the 1-worker loss on the whole minibatch, up to float rounding
(``tests/test_learner_group.py`` measures it). With ``grpo.minibatches > 1`` the rows are dealt so that worker
``k``'s minibatch ``j`` is a slice of the 1-worker run's minibatch ``j`` (when the number of groups allows it).

**Non-finite updates.** A rank whose loss is non-finite skips its backward; every rank learns this in the same
collective that sums the token counts, and all ranks skip the update together.

**Metrics.** The metrics a worker computes during its updates (losses, policy stats, regularizer values, gradient
norm) are combined across ranks with the same weights as the loss, on every rank before adaptive regularizers
observe them (so their controllers stay identical). The driver then averages what the workers return (``*_max``
and ``nonfinite/*`` take the maximum, ``count/*`` is summed). The per-step batch statistics computed after the
updates (``reward/*``, ``response/length``, ``advantage/abs_mean``) are exact means over equal shards;
``kl_initial/k3`` is the mean of per-shard token means.

**Limits.** Batch-level selections inside a regularizer (Lp-Reg's lowest-``rho`` fraction) are taken per shard.
PPO is not supported (its advantage whitening is batch-wide). Every node must see the model path and
``output_dir`` (all ranks load the initial weights and, on resume, the checkpoint; rank 0 writes).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import ray
import torch

from rlkit._config import ConfigError
from rlkit.config.sections import GRPOConfig
from rlkit.types import TrainBatch

from .common import setup_process
from .learner import LearnerCore
from .local import with_plugins

if TYPE_CHECKING:
    from rlkit.regularizers import Regularizer

BUCKET_BYTES = 32 << 20


def check_recipe(recipe) -> None:
    """Refuse what data-parallel learners cannot run, before any work is done (errors name the key)."""
    n = recipe.learner.num_workers
    if n == 1:
        return
    if recipe.algorithm != "grpo":
        raise ConfigError(
            "learner.num_workers",
            f"data-parallel learners support algorithm 'grpo' only, not "
            f"{recipe.algorithm!r}; use learner.num_workers=1",
        )
    if recipe.grpo.prompts_per_step % n:
        raise ConfigError(
            "learner.num_workers",
            f"grpo.prompts_per_step={recipe.grpo.prompts_per_step} must be a "
            f"multiple of learner.num_workers={n} (each worker gets whole groups)",
        )


# ----------------------------------------------------------------------------------------------- in the actors
def loss_share(stats: torch.Tensor, rank: int, aggregation: str) -> float:
    """Rank ``rank``'s share of the global loss normalizer. ``stats``: ``[world, 3]`` rows of (tokens, sequences,
    padded length) of each rank's minibatch. The shares of all ranks sum to 1."""
    n, b = stats[:, 0], stats[:, 1]
    if aggregation == "token-mean":  # sum(v m) / sum(m), clamped like rlkit.objectives.aggregation
        return float(n[rank] / n.sum().clamp_min(1))
    # drgrpo: sum(v m) / (B * L) with the constant L = grpo.norm_length on every rank, so the share is b_k / B
    if aggregation in ("seq-mean-token-mean", "seq-mean-token-sum", "drgrpo"):
        return float(b[rank] / b.sum())
    raise ValueError(f"data-parallel learners: unknown aggregation {aggregation!r}")


class GradSync:
    """What a data-parallel rank does between ``loss.backward()`` and ``optimizer.step()`` (the learner's
    ``self.dist`` hook): agree on skipping, scale by the loss share, all-reduce (sum) the gradients."""

    def __init__(self, rank: int, world: int, aggregation: str, device: torch.device):
        self.rank, self.world, self.aggregation, self.device = rank, world, aggregation, device
        self.shares: list[float] = []

    def sync(self, opt: torch.optim.Optimizer, finite: bool, mask: torch.Tensor) -> bool:
        """Returns whether every rank's loss was finite; if so, every parameter's ``.grad`` is the global one."""
        import torch.distributed as dist

        mine = torch.tensor(
            [float(mask.sum()), float(mask.shape[0]), float(mask.shape[-1]), float(finite)],
            dtype=torch.float64,
            device=self.device,
        )
        rows = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(rows, mine)
        stats = torch.stack(rows).cpu()
        if stats[:, 3].min() < 1:
            return False
        share = loss_share(stats, self.rank, self.aggregation)
        self.shares.append(share)
        params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
        for p in params:
            if p.grad is None:  # unused in this shard's graph: contributes zeros, keeps the layout equal on all ranks
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(params):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket]).mul_(share)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        return True

    def reduce_metrics(self, metrics: dict) -> dict:
        """The same combined metrics on every rank, each rank weighted by its mean loss share this step."""
        import torch.distributed as dist

        weight = sum(self.shares) / len(self.shares) if self.shares else 1.0 / self.world
        self.shares = []
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, (weight, metrics))
        return merge_metrics([m for _, m in gathered], [w for w, _ in gathered])


def _buckets(params: list) -> list[list]:
    """Consecutive parameters of one dtype and device, up to ``BUCKET_BYTES`` per bucket."""
    out: list[list] = []
    cur: list = []
    size = 0
    for p in params:
        if cur and (
            p.dtype != cur[0].dtype or p.device != cur[0].device or size + p.numel() * p.element_size() > BUCKET_BYTES
        ):
            out.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += p.numel() * p.element_size()
    return out + ([cur] if cur else [])


class DataParallelMixin:
    """Process-group set-up for a learner core running as one rank of a :class:`LearnerGroup`."""

    # set by the learner core this is mixed into (:func:`data_parallel_actor`)
    model: torch.nn.Module
    regs: list[Regularizer]
    cfg: GRPOConfig

    def __init__(self, *args, dp_rank: int = 0, torch_threads: int = 1, **kwargs):
        setup_process(torch_threads)
        super().__init__(*args, **kwargs)
        self.dp_rank = dp_rank
        print(f"Learner[{dp_rank}] pid={os.getpid()} regularizers={[r.label for r in self.regs]}", flush=True)

    def dist_address(self) -> tuple[str, int]:
        """This node's IP and a free TCP port for the process group's rendezvous (asked of rank 0)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def dist_init(self, address: str, port: int, world: int, timeout_s: float) -> str:
        """Join the process group (NCCL when the parameters live on a GPU, gloo otherwise) and start from rank
        0's parameters and buffers."""
        import torch.distributed as dist

        device = next(self.model.parameters()).device
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            init_method=f"tcp://{address}:{port}",
            rank=self.dp_rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
        with torch.no_grad():
            for t in [*self.model.parameters(), *self.model.buffers()]:
                dist.broadcast(t.data, src=0)
        self.dist = GradSync(self.dp_rank, world, self.cfg.aggregation, device)
        return backend

    def parameters_digest(self) -> dict:
        """The parameters as CPU tensors (tests compare replicas with ``torch.equal``)."""
        return {k: v.detach().cpu().clone() for k, v in self.model.named_parameters()}


_ACTOR_CLASSES: dict[type, Any] = {}  # core -> its Ray actor class


def data_parallel_actor(core: type[LearnerCore] = LearnerCore):
    """The Ray actor class for one rank of ``core`` (a :class:`LearnerCore` subclass)."""
    if core not in _ACTOR_CLASSES:
        cls = type(f"DataParallel{core.__name__}", (DataParallelMixin, core), {"__module__": __name__})
        _ACTOR_CLASSES[core] = ray.remote(cls)
    return _ACTOR_CLASSES[core]


# ----------------------------------------------------------------------------------------------- in the driver
def merge_metrics(per_worker: list[dict], weights: list[float] | None = None) -> dict:
    """One metrics dict from the workers' (keys may differ: ``nonfinite/*`` appear where they happened).
    ``*_max`` and ``nonfinite/*``: maximum; ``count/*``: sum; everything else: mean, weighted by ``weights``
    (default equal) renormalized over the workers that report the key."""
    weights = weights or [1.0] * len(per_worker)
    out: dict[str, float] = {}
    for key in sorted({k for m in per_worker for k in m}):
        have = [(m[key], w) for m, w in zip(per_worker, weights) if key in m]
        values = [v for v, _ in have]
        if key.endswith("_max") or key.startswith("nonfinite/"):
            out[key] = max(values)
        elif key.startswith("count/"):
            out[key] = sum(values)
        else:
            total = sum(w for _, w in have)
            out[key] = (sum(v * w for v, w in have) / total) if total > 0 else sum(values) / len(values)
    return out


def shard_rows(batch_size: int, group_size: int, num_shards: int, minibatches: int = 1) -> list[list[int]]:
    """Row indices of each shard: whole groups, equal sizes. When the groups divide into ``num_shards *
    minibatches`` parts, shard ``k``'s ``j``-th minibatch (``torch.chunk`` of its rows) is the ``k``-th slice of
    the whole batch's ``j``-th minibatch, so the updates match a 1-worker run's; otherwise shards are contiguous."""
    if batch_size % group_size:
        raise ValueError(f"batch of {batch_size} samples is not whole groups of {group_size}")
    groups = batch_size // group_size
    if groups % num_shards:
        raise ValueError(
            f"{groups} groups (grpo.prompts_per_step) cannot be split evenly over learner.num_workers={num_shards}"
        )
    parts = num_shards * minibatches if groups % (num_shards * minibatches) == 0 else num_shards
    per_part = groups // parts
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    for part in range(parts):  # parts in order; part p belongs to shard p % num_shards
        first = part * per_part * group_size
        shards[part % num_shards].extend(range(first, first + per_part * group_size))
    return shards


def shard_batch(data: TrainBatch, rows: list[int]) -> TrainBatch:
    """``data.shard(rows)`` (:meth:`rlkit.types.TrainBatch.shard`)."""
    return data.shard(rows)


class _Remote:
    """``group.method.remote(...)``: the spelling the driver uses with one learner actor."""

    def __init__(self, fn):
        self.remote = fn


class LearnerGroup:
    """``num_workers`` data-parallel learner actors behind the single-learner interface. Calls that need every
    rank (``train_step``, ``load_training_state``) wait for all of them and return an object ref of the (merged)
    result, or the ref of the first rank that failed, so ``ray.get`` raises that rank's error."""

    def __init__(
        self,
        num_workers: int,
        model_path: str,
        grpo: GRPOConfig | dict,
        regularizers,
        *,
        num_cpus: float = 0.5,
        num_gpus: float = 0,
        core: type[LearnerCore] = LearnerCore,
        timeout_s: float = 1800.0,
        **kwargs,
    ):
        grpo = grpo if isinstance(grpo, core.Section) else core.Section.model_validate(dict(grpo))
        self.num_workers, self.group_size, self.minibatches = num_workers, grpo.group_size, grpo.minibatches
        actor = data_parallel_actor(core)
        self.workers = [
            actor.options(**with_plugins(dict(num_cpus=num_cpus, num_gpus=num_gpus))).remote(
                model_path, grpo, regularizers, dp_rank=rank, **kwargs
            )
            for rank in range(num_workers)
        ]
        address, port = ray.get(self.workers[0].dist_address.remote())
        self.backend = ray.get([w.dist_init.remote(address, port, num_workers, timeout_s) for w in self.workers])[0]
        self.needs = _Remote(lambda: self.workers[0].needs.remote())
        self.get_weights = _Remote(lambda: self.workers[0].get_weights.remote())
        self.save = _Remote(lambda *a, **kw: self.workers[0].save.remote(*a, **kw))
        self.state = _Remote(lambda: self.workers[0].state.remote())
        self.train_step = _Remote(self._train_step)
        self.load_training_state = _Remote(
            lambda path: self._all([w.load_training_state.remote(path) for w in self.workers])
        )

    def _train_step(self, data: TrainBatch):
        rows = shard_rows(len(data.completion_ids), self.group_size, self.num_workers, self.minibatches)
        refs = [w.train_step.remote(shard_batch(data, r)) for w, r in zip(self.workers, rows)]
        failed = _first_failure(refs)
        return failed if failed is not None else ray.put(merge_metrics(ray.get(refs)))

    def _all(self, refs: list):
        failed = _first_failure(refs)
        return failed if failed is not None else refs[0]

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)


def _first_failure(refs: list):
    """Wait for every ref; return the first one that resolves to an error (a rank stuck in a collective because
    another failed never finishes, so failures are taken as they come), or ``None``."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(ready[0])
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError):
            return ready[0]
    return None
