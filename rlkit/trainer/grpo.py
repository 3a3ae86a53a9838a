"""The GRPO/PPO entry point: :func:`run_grpo` runs an :class:`rlkit.trainer.online.OnlineTrainer` under
:class:`rlkit.trainer.faults.StopSignals` (rollouts -> rewards -> reference -> learner -> weight sync, through Ray
actors or, with ``ray.mode: inprocess``, the same worker classes in this process: ``rlkit.workers.local``)."""

from __future__ import annotations

from pathlib import Path

from rlkit.config import Recipe

from .faults import Stop, StopSignals, TrainingError
from .online import OnlineTrainer


def run_grpo(recipe: Recipe, console=None) -> dict:
    """Run the online loop; SIGTERM/SIGINT finish the step, write a training checkpoint and exit with 128 + the
    signal (:class:`rlkit.trainer.faults.StopSignals`)."""
    stops = StopSignals().install()
    try:
        return OnlineTrainer(recipe, console, stops).run()
    except (Stop, TrainingError) as err:
        if isinstance(err, TrainingError) and stops.received is None:
            raise
        stops.exit(err, Path(recipe.output_dir))
    finally:
        stops.restore()
