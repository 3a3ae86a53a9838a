"""The regularizer interface: divergence x reference x weighting, placed in the loss or in the reward.

A regularizer takes a :class:`PolicyBatch` of tensors and returns a per-token penalty (already multiplied by its
coefficient and per-sample weights) plus metrics. No models, no I/O: the trainer fills the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from pydantic import Field, SerializeAsAny, field_validator

from rlkit._config import ConfigError, StrictModel
from rlkit.divergences import f_divergence, linear_f_divergence
from rlkit.references import ReferenceConfig, reference_type, validate_reference

from .weightings import ConstantWeighting, WeightingConfig, build_weighting, validate_weighting, weighting_class

#: a regularizer's ``reference``: the registered type's own config (``SerializeAsAny``: dumped with its fields)
ReferenceField = SerializeAsAny[ReferenceConfig]
#: a regularizer's ``weighting``: the registered weighting's own config
WeightingField = SerializeAsAny[WeightingConfig]


@dataclass
class PolicyBatch:
    """Tensors one optimisation step sees. ``[B, T]`` tensors cover completion tokens (right-padded).

    ``ref_logprobs``/``ref_logits`` may be a tensor (one reference) or a dict keyed by reference key
    (``"initial"``, ``"soup"``, ``"teacher"``, ...: :attr:`rlkit.references.ReferenceConfig.key`) when
    regularizers toward several references are combined.

    ``hidden`` (``[B, T, H]``) and ``lm_head`` (``(weight [V, H], bias [V] or None, temperature)``) stand in for
    ``logits`` when the learner's fused head (``grpo.fused_head``) never materialises them: ``logits = (hidden @
    weight.T + bias) / temperature``; :meth:`exact_divergence` takes either form.
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
    hidden: torch.Tensor | None = None
    lm_head: tuple | None = None
    #: references sent as hidden states: key -> ``(ref_hidden [B, T, H], weight [V, H], bias [V] or None,
    #: temperature)``, ``ref_logits = (ref_hidden @ weight.T + bias) / temperature``; used instead of ``ref_logits``
    ref_hidden: dict[str, tuple] | None = None

    def reference(self, field_name: str, key: str, owner: str) -> torch.Tensor:
        value = getattr(self, field_name)
        if isinstance(value, dict):
            if key not in value:
                raise ValueError(f"regularizer {owner!r} needs {field_name}[{key!r}]; the batch has {sorted(value)}")
            return value[key]
        if value is None:
            raise ValueError(f"regularizer {owner!r} needs batch.{field_name} (reference {key!r}), which is missing")
        return value

    def exact_divergence(
        self, divergence: str, key: str, owner: str, alpha: float = 0.5, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Exact per-token divergence ``[B, T]`` of the policy from reference ``key``'s ``ref_logits`` (already
        divided by the temperature), zero on padding: from ``logits`` (:func:`rlkit.functional.f_divergence`), or,
        when ``logits`` is None and ``hidden`` is set, from ``hidden`` + ``lm_head``
        (:func:`rlkit.functional.linear_f_divergence`, the policy logits divided by the same temperature). A
        reference in ``ref_hidden`` enters as hidden states too: no ``[B, T, V]`` tensor on the fused path."""
        ref_logits: torch.Tensor | None = None
        ref_kw: dict[str, Any] = {}
        ref_temperature: Any = None  # an element of an untyped ``ref_hidden`` tuple
        if self.ref_hidden and key in self.ref_hidden:
            h, w, b, ref_temperature = self.ref_hidden[key]
            ref_kw = {"ref_hidden": h, "ref_weight": w, "ref_bias": b}
        else:
            ref_logits = self.reference("ref_logits", key, owner)
        if self.logits is None and self.hidden is not None:
            weight, bias, temperature = self.require("lm_head", owner)
            if ref_kw and ref_temperature != temperature:
                raise ValueError(
                    f"regularizer {owner!r}: reference {key!r} uses temperature {ref_temperature}, "
                    f"the policy {temperature}"
                )
            return linear_f_divergence(
                self.hidden,
                weight,
                ref_logits,
                divergence,
                alpha,
                bias=bias,
                temperature=temperature,
                mask=self.mask,
                chunk_size=chunk_size or 256,
                **ref_kw,
            )
        if ref_kw:  # the logits learner: the reference logits are built here
            ref_logits = torch.nn.functional.linear(h, w, b) / ref_temperature
        assert ref_logits is not None  # set by one of the branches above (``reference`` raises when missing)
        return f_divergence(
            self.require("logits", owner), ref_logits, divergence, alpha=alpha, mask=self.mask, chunk_size=chunk_size
        )

    def require(self, field_name: str, owner: str) -> torch.Tensor:
        value = getattr(self, field_name)
        if value is None:
            raise ValueError(f"regularizer {owner!r} needs batch.{field_name}, which is missing")
        return value


@dataclass
class RegularizerOutput:
    per_token: torch.Tensor  # [B, T], coefficient and weights applied, zero on padding
    metrics: dict[str, float]


class RegularizerConfig(StrictModel):
    """Fields every regularizer has. Subclasses add their own (and may change defaults)."""

    name: str
    label: str | None = None
    coef: float = Field(0.001, ge=0)
    #: a registered reference type (:mod:`rlkit.references`): ``initial``, ``soup``, ``teacher``, ``proxy``, ...
    reference: ReferenceField = Field(default_factory=lambda: validate_reference("initial"))
    #: a registered weighting (:mod:`rlkit.regularizers.weightings`): ``constant``, ``linear``, ``dads``, ...
    weighting: WeightingField = Field(default_factory=ConstantWeighting)
    placement: Literal["loss", "reward"] = "loss"
    #: how this term's per-token penalty becomes a scalar (None: the objective's ``aggregation``); e.g. APO's DADS
    #: averages the weighted KL per sequence, then over samples (``seq-mean-token-mean``)
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "drgrpo"] | None = None

    @field_validator("reference", mode="before")
    @classmethod
    def _ref(cls, v):
        """A type name or a mapping, validated by the registered type's ``Config`` (a bare string is shorthand
        for ``{type: <string>}``)."""
        return validate_reference(v)

    @field_validator("weighting", mode="before")
    @classmethod
    def _weighting(cls, v):
        """A weighting name or a mapping, validated by the registered weighting's ``Config``."""
        return validate_weighting(v)


#: the config type a :class:`Regularizer` subclass reads through ``self.cfg`` (its ``Config``)
CfgT = TypeVar("CfgT", bound=RegularizerConfig)


class Regularizer(Generic[CfgT]):
    """Base class. Subclasses set ``Config`` and implement :meth:`divergence` (and :meth:`requires`).

    Generic in its config type for the checker only: ``class KL(Regularizer[KLConfig])`` types ``self.cfg``
    and :meth:`check`'s ``cfg`` as ``KLConfig``; a bare ``Regularizer`` base means ``Regularizer[Any]``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[RegularizerConfig]] = RegularizerConfig
    cfg: CfgT

    def __init__(self, cfg: CfgT):
        self.cfg = cfg
        self.weighting = build_weighting(cfg.weighting, cfg.coef)

    # --- configuration -------------------------------------------------------------------------------------
    @classmethod
    def check(cls, cfg: CfgT, path: str) -> None:
        """Refuse combinations that cannot work, with the reason (raise :class:`ConfigError`)."""
        reference_type(cfg.reference.type).check_use(cfg.reference, cls.name, f"{path}.reference")
        if cfg.placement == "reward" and weighting_class(cfg.weighting.type).needs_rewards:
            raise ConfigError(
                f"{path}.weighting",
                f"'{cfg.weighting.type}' weights depend on advantages/accuracy, "
                "which are computed from the rewards: use placement 'loss'",
            )

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
        return self.cfg.reference.key

    @property
    def placement(self) -> str:
        return self.cfg.placement

    def requires(self) -> set[str]:
        """Batch fields this regularizer reads (the trainer uses it to decide what to compute/serve)."""
        return {"logprobs", "mask"}

    def describe(self) -> dict[str, str]:
        """What this regularizer's penalty estimates (``value``, logged as ``<label>/value``) and which
        divergence's gradient it delivers in expectation (``gradient``): the catalogue of ``rlkit regularizers``."""
        return {"value": self.name, "gradient": self.name}

    # --- math -----------------------------------------------------------------------------------------------
    def divergence(self, batch: PolicyBatch) -> torch.Tensor:
        """Unweighted per-token penalty ``[B, T]``: its value is the divergence estimate, its gradient (in
        expectation over the samples) the one :meth:`describe` names."""
        raise NotImplementedError

    def penalty(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """:meth:`divergence` plus diagnostics of its own (e.g. importance-weight maxima)."""
        return self.divergence(batch), {}

    def surrogate_override(self, batch: PolicyBatch) -> torch.Tensor | None:
        """Bool ``[B, T]`` of tokens whose clipped surrogate the objective must replace by ``-A * ratio``."""
        return None

    def __call__(self, batch: PolicyBatch) -> RegularizerOutput:
        mask = batch.mask.to(torch.bool)
        div, extra = self.penalty(batch)
        div = torch.where(mask, div, torch.zeros_like(div))
        coef = self.weighting.coef(batch.step)
        weights = self.weighting.sample_weights(batch)
        per_token = coef * div if weights is None else coef * weights.unsqueeze(-1).to(div.dtype) * div
        n = mask.sum().clamp_min(1)
        value = div.detach()
        # value: per token; seq_value: per sequence (the sum over its tokens, averaged over sequences)
        metrics = {
            f"{self.label}/value": float(value.sum() / n),
            f"{self.label}/seq_value": float(value.sum() / max(value.shape[0], 1)),
            f"{self.label}/coef": float(coef),
            **{f"{self.label}/{k}": float(v) for k, v in extra.items()},
        }
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
