"""The training prompts' order, and the async prefetch of the next step's batch.

:class:`PromptStream` walks a permutation of the training prompts ``per_step`` at a time and reshuffles it with its
own generator when fewer than ``per_step`` are left. The generator is the stream's own: libraries seed the global one
(TRL's SFT calls ``set_seed``), which made the order depend on whether the warm start was trained in this process or
loaded from the cache. Its position (order, cursor, generator state) goes into every training checkpoint; with a
batch prefetched it is the position *before* that batch, so a resumed run draws it again.

:class:`Prefetch` (``grpo.async_rollout``): the next step's batch is prepared in one thread (thread name
``rollout_0``) while the learner trains on this one.
"""

from __future__ import annotations

import random
import sys
from concurrent.futures import Future, ThreadPoolExecutor

from rlkit.utils.train_state import python_random_from_json, python_random_to_json


class PromptStream:
    """Draws the rows of each step from ``rows`` in the order of ``indices`` (the first draw shuffles them)."""

    def __init__(self, rows: list[dict], indices: list[int], per_step: int, seed: int):
        self.rows, self.per_step = rows, per_step
        self.order = list(indices)
        self.cursor = len(self.order)
        self.rng = random.Random(seed)
        self._before_draw = self.position()

    def restore(self, order: list[int], cursor: int, py_random: list) -> None:
        """Continue from a checkpoint's position (:meth:`state`)."""
        self.order, self.cursor = order, cursor
        self.rng.setstate(python_random_from_json(py_random))

    def position(self) -> tuple[list[int], int, tuple]:
        """``(order, cursor, generator state)``, a copy."""
        return list(self.order), self.cursor, self.rng.getstate()

    def draw(self) -> list[dict]:
        """The next ``per_step`` rows."""
        self._before_draw = self.position()
        if self.cursor + self.per_step > len(self.order):
            self.rng.shuffle(self.order)
            self.cursor = 0
        self.cursor += self.per_step
        return [self.rows[i] for i in self.order[self.cursor - self.per_step : self.cursor]]

    def state(self, prefetched: bool) -> tuple[list[int], int, list]:
        """``(order, cursor, py_random)`` for a checkpoint: with a batch ``prefetched`` (drawn, not yet trained
        on), the position before it."""
        order, cursor, rng = self._before_draw if prefetched else (self.order, self.cursor, self.rng.getstate())
        return order, cursor, python_random_to_json(rng)


#: the interpreter's GIL switch interval while a prefetch thread runs (the default is 5 ms). The two threads hand the
#: GIL back and forth around every torch op; when one runs Python for a while (the sampler's loop, collation, reward
#: code), the other, ready to launch its next op, waits up to the interval. Measured at the tiny size, async, 1 torch
#: thread: 0.158 -> 0.151 s a step (2 x 2 runs each, docs/benchmarks.md); restored by :meth:`Prefetch.close`.
SWITCH_INTERVAL_S = 0.0005


class Prefetch:
    """One batch prepared ahead, in a thread named ``rollout_0``; while it exists the GIL switch interval is
    :data:`SWITCH_INTERVAL_S` (at most)."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rollout")
        self.pending: Future | None = None
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._interval, SWITCH_INTERVAL_S))

    def submit(self, fn, *args) -> None:
        self.pending = self.pool.submit(fn, *args)

    def take(self):
        """The prefetched batch (waits for it)."""
        batch, self.pending = self.pending.result(), None
        return batch

    def cancel(self) -> None:
        """Leave now (a stop): the thread's work is abandoned."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        sys.setswitchinterval(self._interval)

    def close(self) -> None:
        self.pool.shutdown()
        sys.setswitchinterval(self._interval)
