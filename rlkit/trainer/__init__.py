"""Driver loops per algorithm: ``grpo`` and ``ppo`` (online, through Ray actors) and ``dpo`` (offline)."""

from __future__ import annotations


def run_recipe(recipe, console=None) -> dict:
    """Run a validated recipe with the driver of its ``algorithm``; returns the run summary."""
    from .setup import check_output_dir

    check_output_dir(recipe.output_dir)  # before any work: a file in the way is one line naming output_dir
    if recipe.algorithm == "dpo":
        from .dpo import run_dpo

        return run_dpo(recipe, console)
    from .grpo import run_grpo  # GRPO and PPO share the online loop

    return run_grpo(recipe, console)
