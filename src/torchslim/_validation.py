"""Turn pydantic validation errors into one-line ConfigErrors naming the field."""

from __future__ import annotations

import math
import re
import typing
from typing import Any, TypeVar

import pydantic

from torchslim._errors import ConfigError, brief, did_you_mean

M = TypeVar("M", bound=pydantic.BaseModel)


def _admits_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_admits_bool(arg) for arg in typing.get_args(annotation))


def _expected(annotation: Any) -> str:
    """What a field typed ``annotation`` holds, for an error message (``Optional[int]`` -> an integer)."""
    kinds = {annotation, *typing.get_args(annotation)}
    return next((text for kind, text in ((int, "an integer"), (float, "a number"), (str, "a string"))
                 if kind in kinds), "a value")


class StrictModel(pydantic.BaseModel):
    """Base of every user-facing config: unknown keys are rejected, values are immutable, numbers are finite, and
    true/false is no number (pydantic's lax mode reads ``epochs: true`` as 1)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and not _admits_bool(annotation):
            raise ConfigError("", f"must be {_expected(annotation)}, not {str(value).lower()}")
        return value


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


MAX_LR = 10.0  # a step larger than this diverges any model; far larger ones overflow the optimizer's float32 state


def learning_rate(field: str, value: Any) -> float:
    """``value`` as a learning rate in (0, MAX_LR], else a ConfigError naming ``field``."""
    number = finite_float(value)
    if number is None or not 0 < number <= MAX_LR:
        raise ConfigError(field, f"must be a positive number at most {MAX_LR:g}, got {brief(value)}")
    return number


def field_path(loc: tuple[Any, ...]) -> str:
    """``("stages", 0, "train", "epochs")`` -> ``stages[0].train.epochs``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(err: dict[str, Any], integer: bool = False) -> str:
    """The one-line wording of a pydantic error; ``integer``: the field holds whole numbers (``epochs``), not
    fractions (``test_fraction: 0`` is not asked to be a positive integer)."""
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
    if kind == "too_short":
        return f"must hold at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must hold at most {ctx.get('max_length')} item(s)"
    if kind == "literal_error":  # as the stage configs say it: ``must be one of a, b, got 'c'``
        expected = str(ctx.get("expected", ""))
        names = re.findall(r"'([^']*)'", expected)
        return f"must be one of {', '.join(names) if names else expected}, got {brief(err.get('input'))}"
    if kind == "greater_than":
        if ctx["gt"] == 0:
            return "must be a positive integer" if integer else "must be positive"
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
        field = _field_at(model, loc)
        message = _message(err, integer=field is not None and _holds(field.annotation, int)
                            and not _holds(field.annotation, float))
        if err["type"] == "extra_forbidden" and loc:
            message += _suggestion(str(loc[-1]), _keys_at(model, loc[:-1]))
        raise ConfigError(path, message, source) from None


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The pydantic model an annotation holds (``Optional[Limits]`` -> ``Limits``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _holds(annotation: Any, kind: type) -> bool:
    """Whether an annotation is or holds ``kind`` (``Optional[int]`` holds int)."""
    return annotation is kind or any(_holds(arg, kind) for arg in typing.get_args(annotation))


def _field_at(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> Any:
    """The pydantic field at ``loc`` inside ``model`` (list indices skipped), or None."""
    current: type[pydantic.BaseModel] | None = model
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part)) if current is not None else None
        if field is None:
            return None
        current = _model_in(field.annotation)
    return field


def _keys_at(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the mapping at ``loc`` inside ``model`` accepts."""
    current: type[pydantic.BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part)) if current is not None else None
        current = _model_in(field.annotation) if field is not None else None
        if current is None:
            return []
    return [name for name, f in current.model_fields.items() if not f.exclude]


def _suggestion(key: str, known: list[str]) -> str:
    """``; did you mean 'metric'?`` for a misspelt key, else the keys expected there."""
    close = did_you_mean(key, known, cutoff=0.6)
    if close:
        return "; " + close.rstrip()
    return f" (expected {', '.join(known)})" if known else ""
