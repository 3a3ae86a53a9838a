"""Recipe files: YAML loading with ``extends:``, deep merges, dotted ``key=value`` overrides (errors name the key)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from rlkit._config import ConfigError


def _parse_value(text: str) -> Any:
    """YAML value, except that ``1e-3`` is the number PyYAML (YAML 1.1) would leave as a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: ``3``, ``0.1``, ``true``, ``[a, b]``, ``{k: v}``).
    A list element is addressed by index: ``rewards.0.weight=0.5``."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key.path=value")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(key, "empty key in override")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            path = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(path, f"not a valid index into a list of {len(node)}")
                node = node[int(part)]
                continue
            if part not in node or node[part] is None:
                node[part] = {}
            elif not isinstance(node[part], (dict, list)):
                raise ConfigError(path, f"is a {type(node[part]).__name__}, cannot set a sub-key")
            node = node[part]
        last = parts[-1]
        value = _parse_value(raw)
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(key, f"not a valid index into a list of {len(node)}")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge recursively, anything else (lists included) replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _duplicate_key(node, path: str = "", _done: set | None = None) -> tuple[str, int, int] | None:
    """``(dotted key, its line, the line of the first one)`` for the first key repeated in a mapping of the
    composed YAML tree (``<<`` merge keys aside, whose keys the mapping may override), else ``None``."""
    _done = set() if _done is None else _done
    if node is None or id(node) in _done:  # an anchor's node is checked once (and a recursive one ends)
        return None
    _done.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key, value in node.value:
            sub = path
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                sub = f"{path}.{key.value}" if path else key.value
                if key.value in first:
                    return sub, key.start_mark.line + 1, first[key.value]
                first[key.value] = key.start_mark.line + 1
            found = _duplicate_key(value, sub, _done)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, f"{path}[{i}]", _done)
            if found:
                return found
    return None


#: the recipe section each algorithm reads its own settings from (``algorithm: ppo`` reads ``ppo:``, never ``grpo:``)
ALGORITHM_SECTIONS = ("grpo", "ppo", "dpo")


def inherit(base: dict, child: dict) -> dict:
    """``child`` on top of the recipe it extends. A child that changes the algorithm (``algorithm: ppo`` extending
    the GRPO quickstart) inherits the shared sections (model, data, sft, rollout, ...) but not the base's section
    of another algorithm, which belongs to the base's job and would not be read."""
    algorithm = child.get("algorithm")
    if algorithm is not None and algorithm != base.get("algorithm", "grpo"):
        base = {k: v for k, v in base.items() if k not in ALGORITHM_SECTIONS or k == algorithm}
    return deep_merge(base, child)


def load_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a recipe; ``extends: other.yaml`` (relative to this file) loads that one first and merges on top
    (:func:`inherit`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "recipe file not found")
    try:
        text = path.read_text()
        dup = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        if dup:
            raise ConfigError(
                str(path),
                f"duplicate key {dup[0]!r} at line {dup[1]} (first at line {dup[2]}): "
                "a key may appear once (the later value would silently win)",
            )
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), f"malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "a recipe must be a YAML mapping at the top level")
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: extends", "must be a path to another recipe")
        parent_path = (path.parent / parent).resolve()
        if parent_path in _seen:
            raise ConfigError(f"{path}: extends", f"circular 'extends' through {parent_path}")
        data = inherit(load_yaml(parent_path, _seen + (path.resolve(),)), data)
    return data
