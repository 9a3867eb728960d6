"""Pruning configs: one frozen dataclass per method, fields named exactly as the recipe keys.

A recipe stage ``- prune: {method: structured, sparsity: 0.5, ...}`` becomes a config through
:func:`config_from_mapping`; every value is checked here, at the edge, and a bad one raises
``ConfigError(field, message)`` naming the key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchslim._errors import ConfigError, brief, did_you_mean
from torchslim._validation import finite_float, learning_rate
from torchslim.train import AUGMENTATIONS  # the training loop applies them

__all__ = [
    "Calibration",
    "Distill",
    "Finetune",
    "Schedule",
    "MagnitudeConfig",
    "ActivationConfig",
    "StructuredConfig",
    "IMPORTANCES",
    "config_from_mapping",
]

IMPORTANCES = ("l1", "l2", "activation", "taylor", "output_taylor")
SCHEDULE_KINDS = ("oneshot", "polynomial")
SCOPES = ("layer", "global", "lamp")


def _check_fraction(name: str, value: Any) -> float:
    """A sparsity: a number in [0, 1)."""
    if finite_float(value) is None:
        raise ConfigError(name, f"must be a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ConfigError(name, f"must be in [0, 1), got {value}")
    return float(value)


MAX_BATCH_SIZE = 2**31 - 1  # larger ones overflow the data loader's sampler
MAX_EPOCHS = 1_000_000
MAX_STEPS = 10_000  # pruning steps; each one prunes and fine-tunes


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {brief(value)}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"must be at most {maximum}, got {brief(value)}")
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _check_patterns(name: str, patterns: Any) -> tuple[str, ...]:
    """Module names, or ``re:`` + a regex that must match a whole name."""
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
        raise ConfigError(name, f"must be a list of module names or 're:' patterns, got {patterns!r}")
    for i, p in enumerate(patterns):
        _check_pattern(f"{name}[{i}]", p)
    return tuple(patterns)


def _check_pattern(name: str, pattern: Any) -> None:
    if not isinstance(pattern, str) or not pattern or pattern == "re:":
        raise ConfigError(name, f"a module name or 're:' pattern must be a non-empty string, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except (re.error, RecursionError, OverflowError) as exc:
            raise ConfigError(name, f"invalid regular expression {pattern[3:]!r}: {exc}") from None


def _check_overrides(overrides: Any) -> dict[str, float]:
    if not isinstance(overrides, Mapping):
        raise ConfigError("overrides", f"must be a mapping of module name or 're:' pattern to sparsity, "
                                       f"got {overrides!r}")
    for key, value in overrides.items():
        _check_pattern(f"overrides.{key}", key)
        _check_fraction(f"overrides.{key}", value)
    return {k: float(v) for k, v in overrides.items()}


@dataclass(frozen=True)
class Schedule:
    """How sparsity grows: ``oneshot`` (all at once) or ``polynomial`` over ``steps`` steps (Zhu & Gupta, 2017).

    Args:
        kind: ``oneshot`` or ``polynomial``.
        steps: number of pruning steps; 1 for ``oneshot``.
    """

    kind: str = "oneshot"
    steps: int = 1

    def __post_init__(self):
        _check_choice("kind", self.kind, SCHEDULE_KINDS)
        _check_int("steps", self.steps, 1, MAX_STEPS)
        if self.kind == "oneshot" and self.steps != 1:
            raise ConfigError("steps", f"a oneshot schedule has 1 step, got {self.steps}; use kind: polynomial")


@dataclass(frozen=True)
class Calibration:
    """Data used to measure activations or gradients: the first ``batches`` batches of the train split."""

    batches: int = 8

    def __post_init__(self):
        _check_int("batches", self.batches, 1)


@dataclass(frozen=True)
class Distill:
    """Fine-tune on the unpruned model's soft outputs (Hinton et al., 2015): the teacher is a frozen copy of the
    model as it was before the first pruning step, the loss ``alpha * T**2 * KL(p_t || p_s) + (1 - alpha) * CE``.

    Args:
        temperature: T > 0.
        alpha: share of the soft-target term, in [0, 1].
    """

    temperature: float = 4.0
    alpha: float = 0.9

    def __post_init__(self):
        t, a = self.temperature, self.alpha
        if finite_float(t) is None or not t > 0:
            raise ConfigError("temperature", f"must be a finite number > 0, got {brief(t)}")
        if finite_float(a) is None or not 0.0 <= a <= 1.0:
            raise ConfigError("alpha", f"must be a number in [0, 1], got {brief(a)}")


@dataclass(frozen=True)
class Finetune:
    """Training after pruning: ``epochs`` in total, spread over the schedule's steps, at learning rate ``lr``, in
    batches of ``batch_size``, with the same ``augment`` choices as training (``none``, ``shift``, ``mixup``,
    ``shift+mixup``); with ``distill``, on the unpruned model's soft outputs as well as the labels. With ``ema``
    (a decay in (0, 1), e.g. 0.99), each fine-tuning ends with the exponential moving average of the weights over
    its optimizer steps: a pruned model's accuracy after a short fine-tuning varies by points with the data order,
    and the average is steadier than any one epoch's weights."""

    epochs: int
    lr: float
    batch_size: int = 64
    augment: str = "none"
    distill: Distill | None = None
    ema: float | None = None

    def __post_init__(self):
        _check_int("epochs", self.epochs, 0, MAX_EPOCHS)
        learning_rate("lr", self.lr)
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_choice("augment", self.augment, AUGMENTATIONS)
        object.__setattr__(self, "distill", value_object("distill", Distill, self.distill, optional=True))
        e = self.ema
        if e is not None and (finite_float(e) is None or not 0.0 < e < 1.0):
            raise ConfigError("ema", f"must be a number in (0, 1) or null, got {brief(e)}")


_VALUE_OBJECTS = {"schedule": Schedule, "calibration": Calibration, "finetune": Finetune}


def _check_shared_fields(config) -> None:
    """The checks of the fields the methods' configs share (sparsity, value objects, ignore, overrides), for
    those ``config`` has; normalises ``ignore`` to a tuple and ``overrides`` to a plain dict of floats."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    if "sparsity" in fields:
        _check_fraction("sparsity", config.sparsity)
    for name, cls in _VALUE_OBJECTS.items():
        if name in fields:
            value = getattr(config, name)
            if not isinstance(value, cls) and not (value is None and fields[name].default is None):
                optional = " or None" if fields[name].default is None else ""
                raise ConfigError(name, f"must be a {cls.__name__}{optional}, got {value!r}")
    object.__setattr__(config, "ignore", _check_patterns("ignore", config.ignore))
    if "overrides" in fields:
        object.__setattr__(config, "overrides", _check_overrides(config.overrides))


@dataclass(frozen=True)
class MagnitudeConfig:
    """Unstructured pruning: zero the smallest-|w| weights of every Linear/ConvNd layer; masks keep them zero.

    Args:
        sparsity: fraction of weights zeroed, in [0, 1).
        scope: ``layer`` (each layer to ``sparsity``), ``global`` (one |w| threshold across layers) or ``lamp``
            (one threshold across layers on LAMP scores, Lee et al. 2021: each weight's w² over the sum of the w²
            of its layer's weights at least as large; invariant to a layer's scale, and no layer loses every
            weight).
        schedule: oneshot or polynomial.
        finetune: training between/after the schedule's steps, or None.
        ignore: layers left dense (names as in ``named_modules`` or ``re:`` + full-match regex).
        overrides: per-layer sparsity by name or pattern; an overridden layer is pruned on its own.
    """

    sparsity: float
    scope: str = "layer"
    schedule: Schedule = Schedule()
    finetune: Finetune | None = None
    ignore: tuple[str, ...] = ()
    overrides: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        _check_shared_fields(self)
        _check_choice("scope", self.scope, SCOPES)


@dataclass(frozen=True)
class ActivationConfig:
    """Remove units (neurons/channels) whose mean |activation| on calibration data, divided by the layer's
    largest, is below ``threshold``.

    Args:
        threshold: τ in [0, 1].
        calibration: how many batches to measure on.
        finetune: training after the removal, or None.
        ignore: layers whose units are kept.
    """

    threshold: float
    calibration: Calibration = Calibration()
    finetune: Finetune | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise ConfigError("threshold", f"must be a number in [0, 1], got {t!r}")
        _check_shared_fields(self)


@dataclass(frozen=True)
class StructuredConfig:
    """Remove whole channels/neurons (and attention heads) so the model physically shrinks.

    Args:
        sparsity: fraction of units removed per layer; in transformer blocks, of heads and FFN neurons.
        importance: ``l1`` | ``l2`` (weight norms) | ``activation`` (mean |activation|) | ``taylor`` (|w·∂L/∂w|) |
            ``output_taylor`` (mean over samples of |∂L/∂m| for a mask m on the unit's output: Michel et al.,
            2019, for heads; the same for neurons and channels; ranks transformer heads and FFN neurons best).
        calibration: batches for the ``activation``, ``taylor`` and ``output_taylor`` importances.
        schedule: oneshot or polynomial.
        finetune: training between/after the schedule's steps, or None.
        ignore: layers whose units are kept.
        overrides: per-layer sparsity by name or pattern.
        reconstruct: after each cut, refit every layer that lost inputs by least squares on the calibration
            batches, so that it reproduces its unpruned output (see :mod:`torchslim.prune.reconstruct`).
    """

    sparsity: float
    importance: str = "l2"
    calibration: Calibration = Calibration()
    schedule: Schedule = Schedule()
    finetune: Finetune | None = None
    ignore: tuple[str, ...] = ()
    overrides: Mapping[str, float] = field(default_factory=dict)
    reconstruct: bool = False

    def __post_init__(self):
        _check_shared_fields(self)
        _check_choice("importance", self.importance, IMPORTANCES)
        if not isinstance(self.reconstruct, bool):
            raise ConfigError("reconstruct", f"must be true or false, got {self.reconstruct!r}")


METHODS: dict[str, type] = {
    "magnitude": MagnitudeConfig,
    "activation": ActivationConfig,
    "structured": StructuredConfig,
}
def value_object(key: str, cls: type, raw: Any, *, optional: bool = False) -> Any:
    """A nested recipe mapping (``schedule: {kind: polynomial, steps: 3}``) as the value object ``cls``.

    Args:
        key: the recipe key, for errors (``schedule.steps: ...``).
        cls: the frozen dataclass to build.
        raw: the mapping, or an instance of ``cls``; None only when ``optional``.
        optional: whether the key may be null (its field defaults to None).
    """
    if isinstance(raw, cls) or (raw is None and optional):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(key, f"must be a mapping, got {raw!r}")
    known = [f.name for f in dataclasses.fields(cls)]
    for k in raw:
        if k not in known:
            raise ConfigError(f"{key}.{k}", f"unknown key (expected {', '.join(known)})")
    try:
        return cls(**raw)
    except ConfigError as err:
        raise err.within(key) from None
    except TypeError:
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in raw]
        raise ConfigError(f"{key}.{missing[0]}", "required key is missing") from None


def config_from_mapping(data: Mapping[str, Any], stage_keys: tuple[str, ...] = ()):
    """Build the config for one recipe ``prune`` stage.

    Args:
        data: the stage's mapping, e.g. ``{"method": "magnitude", "sparsity": 0.9, "scope": "global"}``.
        stage_keys: keys the stage itself takes besides the config's (named among the expected ones).

    Returns:
        a MagnitudeConfig, ActivationConfig or StructuredConfig.

    Raises:
        ConfigError: naming the key that is unknown, does not apply to the method, is missing or is invalid.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("", f"a prune stage must be a mapping, got {data!r}")
    method = data.get("method")
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError("method", f"{did_you_mean(method, METHODS)}must be one of {', '.join(METHODS)}, "
                                   f"got {method!r}")
    cls = METHODS[method]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    all_keys = {f.name for c in METHODS.values() for f in dataclasses.fields(c)}
    kwargs = {}
    for key, value in data.items():
        if key == "method":
            continue
        if key not in fields:
            if key in all_keys:
                raise ConfigError(key, f"does not apply to method {method}")
            raise ConfigError(key, f"unknown key (expected method, {', '.join([*fields, *stage_keys])})")
        if key in _VALUE_OBJECTS:
            value = value_object(key, _VALUE_OBJECTS[key], value, optional=fields[key].default is None)
        kwargs[key] = value
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in kwargs:
            raise ConfigError(name, f"required key is missing for method {method}")
    return cls(**kwargs)
