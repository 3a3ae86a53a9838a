"""Shared config plumbing: strict pydantic models and errors that name the key path."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A bad recipe/config value. ``str(err)`` is ``"<key.path>: <what is wrong>"``, fit to show a user as is."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}" if path else message)


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, values are validated on assignment too, and a float
    must be finite (``.inf``/``nan`` would pass every bound check and crash at step 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


def _join(prefix: str, loc: tuple) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and part.startswith("function-") or part in ("tagged-union",):
            continue
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate_model(model: type[ModelT], data: Any, path: str = "") -> ModelT:
    """Validate ``data`` into ``model``; raise :class:`ConfigError` for the first problem, naming its key path."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(model.model_fields)) if len(loc) == 1 else None
            msg = "unknown key" + (f" (allowed: {allowed})" if allowed else "")
        elif first["type"] == "missing":
            msg = "required key is missing"
        raise ConfigError(_join(path, loc), msg) from None


#: tags pydantic puts in an error's location for a member of a union (not keys of the recipe)
_UNION_TAGS = {"str", "dict"}
