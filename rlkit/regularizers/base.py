"""The regularizer interface: divergence x reference x weighting, placed in the loss or in the reward.

A regularizer takes a :class:`PolicyBatch` of tensors and returns a per-token penalty (already multiplied by its
coefficient and per-sample weights) plus metrics. No models, no I/O: the trainer fills the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from rlkit._config import ConfigError, StrictModel

from .weighting import ConstantWeighting, WeightingConfig, build_weighting, coerce_weighting


@dataclass
class PolicyBatch:
    """Tensors one optimisation step sees. ``[B, T]`` tensors cover completion tokens (right-padded).

    ``ref_logprobs``/``ref_logits`` may be a tensor (one reference) or a dict keyed by reference type
    (``"initial"``, ``"soup"``, ``"teacher"``) when regularizers toward several references are combined.
    """

    logprobs: torch.Tensor
    mask: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | dict[str, torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    ref_logits: torch.Tensor | dict[str, torch.Tensor] | None = None
    proxy_logprobs: torch.Tensor | None = None
    accuracy: torch.Tensor | None = None
    sampled_from: Literal["policy", "ref"] = "policy"
    step: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    def reference(self, field_name: str, key: str, owner: str) -> torch.Tensor:
        value = getattr(self, field_name)
        if isinstance(value, dict):
            if key not in value:
                raise ValueError(f"regularizer {owner!r} needs {field_name}[{key!r}]; the batch has {sorted(value)}")
            return value[key]
        if value is None:
            raise ValueError(f"regularizer {owner!r} needs batch.{field_name} (reference {key!r}), which is missing")
        return value

    def require(self, field_name: str, owner: str) -> torch.Tensor:
        value = getattr(self, field_name)
        if value is None:
            raise ValueError(f"regularizer {owner!r} needs batch.{field_name}, which is missing")
        return value


@dataclass
class RegularizerOutput:
    per_token: torch.Tensor  # [B, T], coefficient and weights applied, zero on padding
    metrics: dict[str, float]


class ReferenceConfig(StrictModel):
    """Where the reference distribution comes from. A bare string is shorthand for ``{type: <string>}``.

    * ``initial``: the frozen initial (SFT) policy.
    * ``soup``: the weight average of ``checkpoints`` (SALSA), with optional ``weights``.
    * ``teacher``: another (larger) model, ``model`` = its path or hub id (KDRL).
    * ``proxy``: Lp-Reg's filtered, renormalized self-distribution (only for ``lp_reg``).
    """

    type: Literal["initial", "soup", "teacher", "proxy"] = "initial"
    checkpoints: list[str] = Field(default_factory=list)
    weights: list[float] | None = None
    model: str | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.type == "soup":
            if len(self.checkpoints) < 2:
                raise ValueError("a soup reference needs 'checkpoints': a list of at least 2 checkpoint paths")
            if self.weights is not None and len(self.weights) != len(self.checkpoints):
                raise ValueError(f"'weights' has {len(self.weights)} entries for {len(self.checkpoints)} checkpoints")
        elif self.checkpoints or self.weights is not None:
            raise ValueError(f"'checkpoints'/'weights' only apply to type 'soup', not {self.type!r}")
        if self.type == "teacher" and not self.model:
            raise ValueError("a teacher reference needs 'model': the teacher's path or hub id")
        if self.type != "teacher" and self.model:
            raise ValueError(f"'model' only applies to type 'teacher', not {self.type!r}")
        return self


class RegularizerConfig(StrictModel):
    """Fields every regularizer has. Subclasses add their own (and may change defaults)."""

    name: str
    label: str | None = None
    coef: float = Field(0.001, ge=0)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    weighting: WeightingConfig = Field(default_factory=ConstantWeighting)
    placement: Literal["loss", "reward"] = "loss"

    @field_validator("reference", mode="before")
    @classmethod
    def _ref_str(cls, v):
        return {"type": v} if isinstance(v, str) else v

    @field_validator("weighting", mode="before")
    @classmethod
    def _w_str(cls, v):
        return coerce_weighting(v)


class Regularizer:
    """Base class. Subclasses set ``Config`` and implement :meth:`divergence` (and :meth:`requires`)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[RegularizerConfig]] = RegularizerConfig

    def __init__(self, cfg: RegularizerConfig):
        self.cfg = cfg
        self.weighting = build_weighting(cfg.weighting, cfg.coef)

    # --- configuration -------------------------------------------------------------------------------------
    @classmethod
    def check(cls, cfg: RegularizerConfig, path: str) -> None:
        """Refuse combinations that cannot work, with the reason (raise :class:`ConfigError`)."""
        if cfg.reference.type == "proxy":
            raise ConfigError(f"{path}.reference", "'proxy' is Lp-Reg's filtered self-distribution; "
                              "use regularizer 'lp_reg' for it")
        if cfg.placement == "reward" and cfg.weighting.type in ("dads", "paced"):
            raise ConfigError(f"{path}.weighting", f"'{cfg.weighting.type}' weights depend on advantages/accuracy, "
                              "which are computed from the rewards: use placement 'loss'")

    @property
    def label(self) -> str:
        """Metric prefix: ``cfg.label``, else e.g. ``kl_k3`` / ``kl_k3_dads`` / ``js_exact``."""
        if self.cfg.label:
            return self.cfg.label
        w = self.cfg.weighting.type
        return self.default_label() + ("" if w == "constant" else f"_{w}")

    def default_label(self) -> str:
        return self.name

    @property
    def reference_key(self) -> str:
        return self.cfg.reference.type

    @property
    def placement(self) -> str:
        return self.cfg.placement

    def requires(self) -> set[str]:
        """Batch fields this regularizer reads (the trainer uses it to decide what to compute/serve)."""
        return {"logprobs", "mask"}

    # --- math -----------------------------------------------------------------------------------------------
    def divergence(self, batch: PolicyBatch) -> torch.Tensor:
        """Unweighted per-token divergence estimate ``[B, T]``."""
        raise NotImplementedError

    def surrogate_override(self, batch: PolicyBatch) -> torch.Tensor | None:
        """Bool ``[B, T]`` of tokens whose clipped surrogate the objective must replace by ``-A * ratio``."""
        return None

    def __call__(self, batch: PolicyBatch) -> RegularizerOutput:
        mask = batch.mask.to(torch.bool)
        div = self.divergence(batch)
        div = torch.where(mask, div, torch.zeros_like(div))
        coef = self.weighting.coef(batch.step)
        weights = self.weighting.sample_weights(batch)
        per_token = coef * div if weights is None else coef * weights.unsqueeze(-1).to(div.dtype) * div
        n = mask.sum().clamp_min(1)
        metrics = {f"{self.label}/value": float(div.detach().sum() / n), f"{self.label}/coef": float(coef)}
        if weights is not None:
            metrics[f"{self.label}/weight_mean"] = float(weights.float().mean())
        return RegularizerOutput(per_token=per_token, metrics=metrics)

    # --- state (adaptive coefficients) ----------------------------------------------------------------------
    def observe(self, value: float, n_steps: int = 1) -> None:
        """Feed the step's measured divergence to the weighting (adaptive target-KL controller)."""
        self.weighting.observe(value, n_steps)

    def state_dict(self) -> dict:
        return self.weighting.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.weighting.load_state_dict(state)
