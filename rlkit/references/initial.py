"""The ``initial`` reference: the frozen initial (SFT) policy, the default of every regularizer."""

from __future__ import annotations

from typing import Literal

from .registry import ReferenceConfig, ReferenceType


class InitialConfig(ReferenceConfig):
    """``{type: initial}`` (or just ``initial``), optionally refreshed toward the policy (``refresh_every``)."""

    type: Literal["initial"] = "initial"


class InitialReference(ReferenceType):
    """Served from the policy's first warm start (``init_paths[0]``), loaded as is; the defaults of
    :class:`~rlkit.references.registry.ReferenceType` are exactly this. It has the policy's architecture, so it may
    refresh (TR-DPO)."""

    Config = InitialConfig
    refreshable = True
