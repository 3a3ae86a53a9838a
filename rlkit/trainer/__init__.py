"""Driver loops per algorithm: ``grpo`` and ``ppo`` (online) and ``dpo`` (offline).

The online loop is :class:`rlkit.trainer.online.OnlineTrainer` (entry point :func:`rlkit.trainer.grpo.run_grpo`):
rollout -> score -> reference -> train -> sync -> log/checkpoint per step, with the prompt order and async prefetch
in :mod:`~rlkit.trainer.data_stream`, the references decided once in :mod:`~rlkit.trainer.reference_plan`, the weight
transfer in :mod:`~rlkit.trainer.weight_sync`, and the typed batches between roles in :mod:`rlkit.types`. Set-up
(data, warm starts, Ray) is :mod:`~rlkit.trainer.setup`; failures, resume and stop signals :mod:`~rlkit.trainer.faults`.
"""

from __future__ import annotations


def run_recipe(recipe, console=None) -> dict:
    """Run a validated recipe with the driver of its ``algorithm``; returns the run summary."""
    from rlkit._extras import require_recipe

    from .setup import check_output_dir

    check_output_dir(recipe.output_dir)  # before any work: a file in the way is one line naming output_dir
    require_recipe(recipe)  # and a missing optional package: one line naming every pip extra the recipe needs
    if recipe.algorithm == "dpo":
        from .dpo import run_dpo

        return run_dpo(recipe, console)
    from .grpo import run_grpo  # GRPO and PPO share the online loop

    return run_grpo(recipe, console)
