"""Name -> regularizer class, plus named presets that a recipe (or an ablation sweep) can use as one word."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from rlkit._config import ConfigError, validate_model

from .base import Regularizer

_REGISTRY: dict[str, type[Regularizer[Any]]] = {}

#: one-word presets; a dict spec may start from one with ``name: <preset>`` and override any key. Every preset's
#: value estimate and delivered gradient are listed by ``rlkit regularizers`` (:func:`catalogue`).
PRESETS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    # reverse KL in the loss: value from the named estimator, gradient of the reverse KL per visited state
    "kl_k1": [{"name": "kl", "estimator": "k1"}],
    "kl_k2": [{"name": "kl", "estimator": "k2"}],
    "kl_k3": [{"name": "kl", "estimator": "k3"}],
    "kl_k3+": [{"name": "kl", "estimator": "k3+"}],
    "kl_abs": [{"name": "kl", "estimator": "abs"}],
    "kl_exact": [{"name": "kl", "mode": "exact"}],
    # the reverse KL between sequence distributions (score-function terms over later tokens)
    "kl_seq": [{"name": "kl", "estimator": "k3", "gradient": "sequence"}],
    # GRPO paper / verl low_var_kl / OpenRLHF as they run it: k3 differentiated as written = forward-KL gradient
    "kl_k3_pathwise": [{"name": "kl", "estimator": "k3", "gradient": "pathwise"}],
    "kl_reward": [{"name": "kl", "estimator": "k1", "placement": "reward", "coef": 0.05}],
    "kl_adaptive": [
        {
            "name": "kl",
            "estimator": "k1",
            "placement": "reward",
            "coef": 0.05,
            "weighting": {"type": "adaptive", "target": 0.05, "horizon": 1000},
        }
    ],
    # APO's DADS: per-sample weights, KL averaged per sequence then over samples; dads_apo = k3 as View-R1 ran it
    "dads": [{"name": "kl", "estimator": "k3", "weighting": {"type": "dads"}, "aggregation": "seq-mean-token-mean"}],
    "dads_apo": [
        {
            "name": "kl",
            "estimator": "k3",
            "gradient": "pathwise",
            "weighting": {"type": "dads"},
            "aggregation": "seq-mean-token-mean",
        }
    ],
    "forward_kl_exact": [{"name": "forward_kl", "mode": "exact"}],
    "forward_kl_seq": [{"name": "forward_kl", "gradient": "sequence"}],
    "js_exact": [{"name": "js", "mode": "exact"}],
    # DPH-RL: the divergence on reference samples only (needs a rehearsal set: the recipe's `rehearsal` section)
    "forward_kl_rehearsal": [{"name": "forward_kl", "samples": "reference"}],
    "js_rehearsal": [{"name": "js", "samples": "reference"}],
}


def register(name: str):
    """Class decorator: make a :class:`Regularizer` subclass available to recipes as ``name``."""

    def deco(cls: type[Regularizer]) -> type[Regularizer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"regularizer {name!r} is already registered to {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Registered regularizer names."""
    return sorted(_REGISTRY)


def available_presets() -> list[str]:
    return sorted(set(PRESETS) | set(_REGISTRY))


def get(name: str) -> type[Regularizer]:
    if name not in _REGISTRY:
        raise KeyError(name)
    return _REGISTRY[name]


def _expand(spec: Any, path: str) -> list[dict[str, Any]]:
    if isinstance(spec, str):
        if spec in PRESETS:
            return copy.deepcopy(PRESETS[spec])
        if spec in _REGISTRY:
            return [{"name": spec}]
        raise ConfigError(path, f"unknown regularizer {spec!r}; available: {', '.join(available_presets())}")
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"{path}.name", "required key is missing")
        name = spec["name"]
        if not isinstance(name, str):
            raise ConfigError(f"{path}.name", f"must be a string, got {type(name).__name__}")
        if name in _REGISTRY:
            return [dict(spec)]
        if name in PRESETS:
            base = copy.deepcopy(PRESETS[name])
            if len(base) != 1:
                raise ConfigError(
                    f"{path}.name", f"preset {name!r} expands to {len(base)} regularizers; it cannot take overrides"
                )
            merged = {**base[0], **{k: v for k, v in spec.items() if k != "name"}}
            return [merged]
        raise ConfigError(f"{path}.name", f"unknown regularizer {name!r}; available: {', '.join(available_presets())}")
    raise ConfigError(path, f"must be a regularizer name or a mapping, got {type(spec).__name__}")


def build_regularizers(specs: Any, path: str = "regularizers") -> list[Regularizer]:
    """Build regularizers from recipe specs: ``None``, a preset name, a mapping, or a list of those.

    Every spec is validated (unknown keys, wrong types, impossible combinations) and errors name the key path,
    e.g. ``regularizers[1].estimator: ...``. Labels must be unique (set ``label:`` to run two of a kind).
    """
    if specs is None:
        return []
    if isinstance(specs, (str, Mapping)):
        specs = [specs]
    if not isinstance(specs, Sequence):
        raise ConfigError(path, f"must be a list of regularizers, got {type(specs).__name__}")
    out: list[Regularizer] = []
    for i, spec in enumerate(specs):
        item_path = f"{path}[{i}]"
        for expanded in _expand(spec, item_path):
            cls = _REGISTRY[expanded["name"]]
            cfg = validate_model(cls.Config, expanded, item_path)
            cls.check(cfg, item_path)
            out.append(cls(cfg))
    labels = [r.label for r in out]
    for label in labels:
        if labels.count(label) > 1:
            raise ConfigError(path, f"two regularizers share the label {label!r}; give one a distinct 'label'")
    return out


def catalogue() -> list[dict[str, str]]:
    """One row per preset and registered name: ``{"preset", "spec", "label", "value", "gradient", "placement"}``.
    ``value`` is what ``<label>/value`` estimates, ``gradient`` the divergence whose gradient the penalty
    delivers in expectation (section 2b of the regularizer notes)."""
    rows = []
    for name in available_presets():
        spec = PRESETS.get(name, [{"name": name}])
        for reg in build_regularizers(copy.deepcopy(spec)) if spec else []:
            rows.append(
                {
                    "preset": name,
                    "spec": _spec_text(spec[0]),
                    "label": reg.label,
                    "placement": reg.placement,
                    **reg.describe(),
                }
            )
        if not spec:
            rows.append(
                {"preset": name, "spec": "[]", "label": "-", "placement": "-", "value": "nothing", "gradient": "none"}
            )
    return rows


def catalogue_markdown() -> str:
    """:func:`catalogue` as a markdown table (a test keeps the copy in docs/concepts.md equal to it)."""
    lines = [
        "| preset | metric label | placement | value (what `<label>/value` estimates) | gradient delivered |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['preset']}` | `{r['label']}` | {r['placement']} | {r['value']} | {r['gradient']} |" for r in catalogue()
    ]
    return "\n".join(lines) + "\n"


def _spec_text(spec: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"


def check_objective(regularizers: Sequence[Regularizer], objective: str, path: str = "regularizers") -> None:
    """Refuse regularizers an objective cannot use (DPO's divergence lives inside its implicit reward)."""
    if objective == "dpo" and regularizers:
        raise ConfigError(
            path,
            "DPO takes no regularizers: choose the divergence with dpo.divergence (reverse_kl, forward_kl, js, alpha)",
        )
    if objective not in ("grpo", "ppo", "dpo"):
        raise ConfigError("objective", f"unknown objective {objective!r}; choose grpo, ppo or dpo")
