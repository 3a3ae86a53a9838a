"""Divergence ablations as one command: ``rlkit ablate RECIPE --sweep regularizers=kl_k3,js --seeds 2``."""

from .grid import Cell, expand, parse_sweep_arg
from .runner import plan, run_ablation

__all__ = ["Cell", "expand", "parse_sweep_arg", "plan", "run_ablation"]
