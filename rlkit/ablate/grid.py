"""Ablation grids: ``--sweep key=v1,v2`` arguments and recipe ``sweep:`` sections -> a list of cells.

A *group* is one combination of grid values (say ``regularizers=js``); a *cell* is a group run with one seed. Every
cell is an ordinary ``rlkit train`` run of the base recipe with dotted overrides, so anything a recipe can set can be
swept, and a cell can be re-run by hand with the command recorded in its ``cell.json``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from rlkit._config import ConfigError
from rlkit.config import _parse_value

#: the issue's spelling of the recipe key; both work
ALIASES = {"regularizer": "regularizers"}


@dataclass(frozen=True)
class Cell:
    group: str  # "regularizers=js" (grid values only; the same for every seed)
    seed: int
    values: dict[str, Any] = field(hash=False)  # recipe key -> value

    @property
    def name(self) -> str:
        """A directory name: safe characters only, unique per (group, seed)."""
        safe = re.sub(r"[^A-Za-z0-9_.+=-]+", "_", self.group.replace(",", "__")) or "base"
        return f"{safe}__seed{self.seed}"

    def overrides(self) -> list[str]:
        """``key=value`` overrides that turn the base recipe into this cell (values as YAML flow text)."""
        out = [f"{k}={dump_value(v)}" for k, v in self.values.items()]
        return out + [f"seed={self.seed}"]


def dump_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return json.dumps(value)  # numbers, booleans, null: also valid YAML


def value_label(value: Any) -> str:
    """A short readable label: strings and numbers as they are; a regularizer dict by its label/name (+ a short
    hash so two different dicts with the same name stay apart); other structures by a hash."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return str(value)
    digest = hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:6]
    items = value if isinstance(value, list) else [value]
    names = [d.get("label") or d.get("name") for d in items if isinstance(d, dict)]
    if names and all(names):
        return "+".join(map(str, names)) + f"-{digest}"
    return digest


def split_values(text: str) -> list[str]:
    """Split ``a,b,[1,2],{k: v}`` on top-level commas only."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_sweep_arg(arg: str) -> tuple[str, list[Any]]:
    """``"regularizers=kl_k3,js"`` -> ``("regularizers", ["kl_k3", "js"])`` (each value parsed as YAML)."""
    if "=" not in arg:
        raise ConfigError(f"--sweep {arg}", "expected key=value1,value2,...")
    key, _, raw = arg.partition("=")
    key = ALIASES.get(key.strip(), key.strip())
    values = [_parse_value(text) for text in split_values(raw)]
    if not key or not values:
        raise ConfigError(f"--sweep {arg}", "needs a key and at least one value")
    return key, values


def expand(grid: dict[str, list[Any]], seeds: list[int], arms: dict[str, dict[str, Any]] | None = None) -> list[Cell]:
    """Every combination of grid values (first key varies slowest) x every seed, seed-major so that a partial
    run already covers every group once.

    ``arms`` (optional) are named sets of overrides that go together, e.g. DPH-RL's rehearsal regularizer with the
    ``rehearsal`` section it needs: ``{"dph": {"regularizers": "forward_kl_rehearsal", "rehearsal": {"k": 8}}}``.
    Each arm is crossed with the grid (arms vary slowest); its group label starts with ``arm=<name>``."""
    grid = {ALIASES.get(k, k): list(v) for k, v in grid.items()}
    arms = {name: {ALIASES.get(k, k): v for k, v in over.items()} for name, over in (arms or {}).items()}
    if "seed" in grid or any("seed" in over for over in arms.values()):
        raise ConfigError("sweep.grid.seed", "use sweep.seeds / --seeds for seeds")
    for name, over in arms.items():
        both = sorted(set(over) & set(grid))
        if both:
            raise ConfigError(f"sweep.arms.{name}.{both[0]}", "is also a grid key: set it in one place")
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys))) if keys else [()]
    groups = []
    for arm, over in arms.items() if arms else [(None, {})]:
        for combo in combos:
            values = {**over, **dict(zip(keys, combo))}
            label = ",".join([f"arm={arm}"] * (arm is not None) + [f"{k}={value_label(values[k])}" for k in keys])
            groups.append((label or "base", values))
    labels = [g[0] for g in groups]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup:
        raise ConfigError("sweep", f"two grid points have the same label {dup!r}; give them distinct labels")
    return [Cell(label, seed, values) for seed in seeds for label, values in groups]
