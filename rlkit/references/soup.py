"""The ``soup`` reference: the weight average of checkpoints ("model soups"), SALSA's reference (arXiv 2411.01798).

:class:`SoupReference` is the registered type; :func:`soup_state_dict` the average itself, :func:`load_soup_model`
what its reference worker loads."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from rlkit._config import ConfigError

from .registry import ReferenceConfig, ReferenceSource, ReferenceType


class SoupConfig(ReferenceConfig):
    """``checkpoints``: at least two paths, hub ids, LoRA adapter directories or ``sft:<i>`` (the i-th SFT warm
    start of the run); ``weights``: one non-negative weight each (default uniform)."""

    type: Literal["soup"] = "soup"
    checkpoints: list[str] = Field(default_factory=list)
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _check(self):
        if len(self.checkpoints) < 2:
            raise ValueError("a soup reference needs 'checkpoints': a list of at least 2 checkpoint paths")
        if self.weights is not None and len(self.weights) != len(self.checkpoints):
            raise ValueError(f"'weights' has {len(self.weights)} entries for {len(self.checkpoints)} checkpoints")
        return self


class SoupReference(ReferenceType[SoupConfig]):
    """Resolved to its checkpoints' paths (``sft:<i>`` -> the run's i-th warm start), loaded as their average in
    the worker; it has the policy's architecture, so it may refresh (TR-DPO)."""

    Config = SoupConfig
    refreshable = True

    @classmethod
    def sft_runs(cls, cfg: SoupConfig) -> int:
        return max((int(ck.split(":", 1)[1]) + 1 for ck in cfg.checkpoints if ck.startswith("sft:")), default=0)

    @classmethod
    def source(cls, cfg: SoupConfig, init_paths: list[str], prepared=None) -> ReferenceSource:
        return ReferenceSource("soup", [_soup_path(ck, init_paths) for ck in cfg.checkpoints], cfg.weights)

    @classmethod
    def load_model(cls, source: ReferenceSource, dtype: str):
        # checkpoints or LoRA adapter directories, averaged in float32
        return load_soup_model(source.paths, source.weights, dtype)


def _soup_path(ck: str, init_paths: list[str]) -> str:
    if ck.startswith("sft:"):
        i = int(ck.split(":", 1)[1])
        if i >= len(init_paths):
            raise ConfigError("regularizers.reference.checkpoints", f"{ck!r}: SFT is disabled or has no run {i}")
        return init_paths[i]
    if not Path(ck).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError("regularizers.reference.checkpoints", f"checkpoint {ck!r} not found")
    return ck


def soup_state_dict(
    state_dicts: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Weighted parameter average ``theta_ref = sum_i w_i theta_i`` (SALSA: two SFT models, ``w = 1/2`` each).

    ``weights`` default to uniform; they must be non-negative and are normalized to sum to 1, so the result is
    an average. Floating-point tensors are averaged in float32 (returned as float32); non-floating tensors (e.g.
    integer buffers) must be equal across checkpoints and are copied. Works the same for LoRA adapter state dicts
    (averaging the ``lora_A``/``lora_B`` factors; note that this is *not* the average of the merged deltas
    ``B A``; to average deltas, merge the adapters first).

    Raises ``ValueError`` naming the key when keys or shapes differ between checkpoints.
    """
    if len(state_dicts) == 0:
        raise ValueError("soup_state_dict needs at least one state dict")
    if weights is None:
        weights = [1.0] * len(state_dicts)
    if len(weights) != len(state_dicts):
        raise ValueError(f"got {len(weights)} weights for {len(state_dicts)} state dicts")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"soup weights must be non-negative with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    norm = [float(w) / total for w in weights]
    first = state_dicts[0]
    keys = set(first)
    for i, sd in enumerate(state_dicts[1:], start=1):
        missing, extra = sorted(keys - set(sd)), sorted(set(sd) - keys)
        if missing or extra:
            bad = (missing or extra)[0]
            where = f"missing from checkpoint {i}" if missing else f"present in checkpoint {i} but not in checkpoint 0"
            raise ValueError(f"soup: key {bad!r} is {where} (architectures differ?)")
    out: dict[str, torch.Tensor] = {}
    for key in first:
        ref = first[key]
        for i, sd in enumerate(state_dicts[1:], start=1):
            if sd[key].shape != ref.shape:
                raise ValueError(
                    f"soup: key {key!r} has shape {tuple(sd[key].shape)} in checkpoint {i} "
                    f"but {tuple(ref.shape)} in checkpoint 0 (architectures differ?)"
                )
        if not torch.is_floating_point(ref):
            for i, sd in enumerate(state_dicts[1:], start=1):
                if not torch.equal(sd[key], ref):
                    raise ValueError(f"soup: non-floating tensor {key!r} differs between checkpoints 0 and {i}")
            out[key] = ref.clone()
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float32, device=ref.device)
        for w, sd in zip(norm, state_dicts):
            acc.add_(sd[key].to(torch.float32), alpha=w)
        out[key] = acc
    return out


def load_soup_model(paths: Sequence[str], weights: Sequence[float] | None = None, dtype: str = "float32"):
    """``(model, tokenizer)``: the first checkpoint's model holding the :func:`soup_state_dict` of all ``paths``.

    A path may be a full model (directory, hub id, ``tiny``) or a peft LoRA adapter directory (``adapter_config.json``,
    e.g. ``<run>/final/adapter``). An adapter is first merged into its base model (``W0 + s B A``), so what is
    averaged is always **merged full weights**: for adapters ``i`` on one base,
    ``sum_i w_i (W0 + s_i B_i A_i) = W0 + sum_i w_i s_i B_i A_i``, the weighted average of the adapters' updates. (The
    average of the factors, ``(sum w_i B_i)(sum w_i A_i)``, is a different matrix, and needs equal ranks.) Adapters of
    different ranks and plain checkpoints mix freely as long as the architectures agree.

    Raises ``ValueError`` naming the paths and the first key whose presence or shape differs (different
    architectures, or an adapter trained on another base)."""
    from rlkit.models.lora import load_merged_model

    models = [load_merged_model(str(p), dtype) for p in paths]
    dicts = [m.state_dict() for m, _ in models]
    try:
        soup = soup_state_dict(dicts, weights)
    except ValueError as err:
        raise ValueError(f"soup reference from {list(map(str, paths))}: {err}") from None
    model, tokenizer = models[0]
    model.load_state_dict({k: v.to(dicts[0][k].dtype) for k, v in soup.items()})
    return model, tokenizer
