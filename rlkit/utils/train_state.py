"""Full training state for resume, without pickle: tensors in safetensors, everything else in JSON.

A training checkpoint is a Hugging Face model directory written atomically by
:func:`rlkit.utils.checkpoint.save_hf_checkpoint` (``COMPLETE`` marker last) plus:

* ``optimizer.safetensors``: every tensor of the optimizer state, keyed ``state.<param index>.<name>``;
* ``trainer_state.json``: the step, the optimizer's param groups and non-tensor state, the learner's torch RNG
  state, regularizer states (adaptive-KL controller), and the driver's state (data order and position, Python RNG,
  evaluation before training).

Nothing here unpickles anything, so a checkpoint from an untrusted source can at worst hold wrong numbers.
"""

from __future__ import annotations

import json
from typing import Any

import torch

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def optimizer_to_files(opt_state: dict) -> tuple[bytes, dict]:
    """``optimizer.state_dict()`` -> (safetensors bytes of its tensors, JSON-able rest)."""
    from safetensors.torch import save

    tensors, scalars = {}, {}
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return save(tensors) if tensors else b"", {"param_groups": opt_state["param_groups"], "scalars": scalars}


def optimizer_from_files(blob: bytes, meta: dict) -> dict:
    """Inverse of :func:`optimizer_to_files`: a dict for ``optimizer.load_state_dict``."""
    from safetensors.torch import load

    state: dict[int, dict[str, Any]] = {}
    for key, value in (load(blob) if blob else {}).items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    # JSON turned tuples (AdamW's betas) into lists; "params" is the one list of a param group
    groups = [
        {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def rng_to_json(state: torch.Tensor) -> list[int]:
    return state.tolist()


def rng_from_json(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def python_random_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def python_random_from_json(values: list) -> tuple:
    version, internal, gauss = values
    return version, tuple(internal), gauss


def read_state(path) -> dict:
    from pathlib import Path

    return json.loads((Path(path) / STATE_FILE).read_text())
