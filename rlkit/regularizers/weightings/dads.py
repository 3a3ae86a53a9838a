"""``dads``: APO's difficulty-aware per-sample weights (arXiv 2506.21655), :func:`rlkit.weights.dads_weights`."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from rlkit.weights import dads_weights

from .base import Weighting, WeightingConfig


class DadsWeighting(WeightingConfig):
    """APO's DADS (arXiv 2506.21655): per-sample ``1 - exp(-eta * acc)`` on positive-advantage samples, 1 elsewhere
    and where ``acc`` is 0 or 1; ``eta`` defaults to Euler's number ``e``, as the reference code (View-R1) uses
    (see :func:`rlkit.weights.dads_weights`)."""

    type: Literal["dads"]
    eta: float = Field(math.e, gt=0)


class Dads(Weighting):
    Config = DadsWeighting
    cfg: DadsWeighting  # the instance of ``Config`` the base stores
    needs_rewards = True

    def weights(self, batch) -> torch.Tensor:
        return dads_weights(batch.require("accuracy", "dads"), batch.require("advantages", "dads"), self.cfg.eta)
