"""Turn pydantic validation errors into one-line ConfigErrors naming the field."""

from __future__ import annotations

import math
from typing import Any, TypeVar

import pydantic

from torchslim._errors import ConfigError

M = TypeVar("M", bound=pydantic.BaseModel)


class StrictModel(pydantic.BaseModel):
    """Base of every user-facing config: unknown keys are rejected, values are immutable, numbers are finite."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is no real number (bool, string, inf, nan, an integer beyond
    the float range). For the hand-written config checks; pydantic models get the same from ``StrictModel``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def field_path(loc: tuple[Any, ...]) -> str:
    """``("stages", 0, "train", "epochs")`` -> ``stages[0].train.epochs``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(err: dict[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be an integer"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind in ("string_type",):
        return "must be a string"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping"
    if kind in ("list_type", "tuple_type"):
        return "must be a list"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "greater_than":
        if ctx["gt"] == 0:
            return "must be a positive integer" if isinstance(err.get("input"), int) else "must be positive"
        return f"must be > {ctx['gt']}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "less_than":
        return f"must be < {ctx['lt']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def parse(model: type[M], data: Any, *, prefix: str = "", source: str | None = None) -> M:
    """Validate ``data`` against ``model``; the first problem becomes a ConfigError.

    Args:
        model: the pydantic model to build.
        data: the raw mapping (from YAML).
        prefix: field path of ``data`` inside its file, e.g. ``stages[0].train``.
        source: the file name to report.
    """
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Errors raised by our own validators carry their field already.
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):
            path = ".".join(p for p in (prefix, field_path(loc), cause.field) if p).replace(".[", "[")
            raise ConfigError(path, cause.message, source) from None
        path = ".".join(p for p in (prefix, field_path(loc)) if p).replace(".[", "[")
        raise ConfigError(path, _message(err), source) from None
