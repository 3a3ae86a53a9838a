"""Plugins: modules of your own that register components (a regularizer, reference type, weighting, advantage
estimator, policy loss) before the recipe is validated. A recipe lists them under ``plugins:``, each a module name
on ``sys.path`` or the path of a ``.py`` file; they are imported in the driver, and, through the environment
variable :data:`ENV` that the driver sets before starting Ray, in every worker process too."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from rlkit._config import ConfigError

#: ``os.pathsep``-separated plugin specs, read by :func:`load_from_env` in every worker process
ENV = "RLKIT_PLUGINS"


def import_plugin(spec: str):
    """Import one plugin: a ``.py`` file path (loaded under its stem's name) or a dotted module name."""
    if spec.endswith(".py"):
        path = Path(spec).resolve()
        name = f"rlkit_plugin_{path.stem}"
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            assert module_spec.loader is not None  # a file location always gets a source loader
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    return importlib.import_module(spec)


def load_plugins(specs: list[str], key: str = "plugins") -> None:
    """Import every plugin (errors name ``plugins[i]`` and the reason) and export them to worker processes."""
    resolved = []
    for i, spec in enumerate(specs):
        try:
            import_plugin(spec)
        except Exception as err:  # an import error of the user's module: name it, keep the reason
            raise ConfigError(f"{key}[{i}]", f"cannot import plugin {spec!r}: {type(err).__name__}: {err}") from None
        resolved.append(str(Path(spec).resolve()) if spec.endswith(".py") else spec)
    if resolved:
        os.environ[ENV] = os.pathsep.join(dict.fromkeys(os.environ.get(ENV, "").split(os.pathsep) + resolved)).strip(
            os.pathsep
        )


def load_from_env() -> None:
    """In a worker process: import the plugins the driver exported (:data:`ENV`); nothing when unset."""
    for spec in filter(None, os.environ.get(ENV, "").split(os.pathsep)):
        import_plugin(spec)
