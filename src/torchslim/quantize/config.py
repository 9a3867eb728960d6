"""Quantization configs: one frozen dataclass per method, fields named exactly as the recipe keys.

    quantize: {method: weight, bits: 4, granularity: group, group_size: 32, symmetric: true}
    -> config_from_mapping(...) == WeightOnlyConfig(bits=4, granularity=PerGroup(32), symmetric=True)
"""

from __future__ import annotations

import dataclasses
import re
import types
from dataclasses import dataclass, field
from typing import Any, Mapping

from torchslim._errors import ConfigError, did_you_mean
from torchslim._validation import finite_float, learning_rate
from torchslim.quantize.granularity import (Granularity, PerChannel, PerGroup, PerTensor, granularity_from_key,
                                           granularity_key)
from torchslim.quantize.observers import OBSERVERS
from torchslim.quantize.primitives import check_bits


MAX_ITERATIONS = 10_000  # k-means iterations per layer
MAX_EPOCHS = 1_000_000


@dataclass(frozen=True)
class CalibrationConfig:
    """How activation ranges are estimated: ``batches`` batches through ``observer``."""

    batches: int = 8
    observer: str = "minmax"
    percentile: float = 99.99

    def __post_init__(self):
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1:
            raise ConfigError("calibration.batches", f"must be a positive integer, got {self.batches!r}")
        if not isinstance(self.observer, str) or self.observer not in OBSERVERS:
            raise ConfigError("calibration.observer", f"unknown observer {self.observer!r}; known: {sorted(OBSERVERS)}")
        if finite_float(self.percentile) is None or not 50.0 < float(self.percentile) <= 100.0:
            raise ConfigError("calibration.percentile", f"must be in (50, 100], got {self.percentile!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Arguments handed to the caller's ``finetune(model, epochs, lr)``."""

    epochs: int = 1
    lr: float = 1e-4

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError("finetune.epochs", f"must be a non-negative integer, got {self.epochs!r}")
        if self.epochs > MAX_EPOCHS:
            raise ConfigError("finetune.epochs", f"must be at most {MAX_EPOCHS}, got {self.epochs!r}")
        learning_rate("finetune.lr", self.lr)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_bool(cfg, name: str) -> None:
    if not isinstance(getattr(cfg, name), bool):
        raise ConfigError(name, f"must be true or false, got {getattr(cfg, name)!r}")


def _check_reduce_range(cfg) -> None:
    if not (isinstance(cfg.reduce_range, bool) or cfg.reduce_range == "auto"):
        raise ConfigError("reduce_range", f"must be true, false or auto, got {cfg.reduce_range!r}")


def _check_nested(cfg, name: str, cls: type) -> None:
    """A nested section the method needs (``calibration``, ``finetune``) must be given, not null."""
    if not isinstance(getattr(cfg, name), cls):
        raise ConfigError(name, f"must be a mapping of {cls.__name__} settings, got {getattr(cfg, name)!r}")


def _check_common(cfg) -> None:
    """Validate the keys every method shares: ignore, overrides, max_metric_drop."""
    ignore = cfg.ignore
    if isinstance(ignore, str):  # one name: a pattern, not a sequence of characters
        ignore = (ignore,)
    if not isinstance(ignore, (list, tuple)):
        raise ConfigError("ignore", f"must be a list of layer names or re: patterns, got {ignore!r}")
    object.__setattr__(cfg, "ignore", tuple(ignore))
    for pattern in cfg.ignore:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("ignore", f"entries must be non-empty strings, got {pattern!r}")
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except (re.error, RecursionError, OverflowError) as err:
                raise ConfigError("ignore", f"bad regular expression {pattern!r}: {err}") from None
    if cfg.max_metric_drop is not None and (not _is_number(cfg.max_metric_drop) or not 0 <= cfg.max_metric_drop < 1):
        raise ConfigError("max_metric_drop", f"must be a number in [0, 1), got {cfg.max_metric_drop!r}")
    overrides = getattr(cfg, "overrides", None)
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise ConfigError("overrides", f"must map layer names to bits, got {overrides!r}")
        for name, bits in overrides.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"overrides.{name}", "a layer name or re: pattern must be a non-empty string")
            check_bits(bits, f"overrides.{name}")
        object.__setattr__(cfg, "overrides", types.MappingProxyType(dict(overrides)))


def _granularity(cfg, allowed: tuple[type, ...]) -> None:
    """Normalise ``granularity`` (+ ``group_size``) into a value object of an allowed type."""
    if cfg.granularity == "group" and PerGroup not in allowed:
        raise ConfigError("granularity", "'group' is for weight-only quantization; use 'tensor' or 'channel'")
    g = granularity_from_key(cfg.granularity, getattr(cfg, "group_size", None))
    if not isinstance(g, allowed):
        names = [t.__name__ for t in allowed]
        raise ConfigError("granularity", f"{g!r} is not supported by this method; use one of {names}")
    object.__setattr__(cfg, "granularity", g)


@dataclass(frozen=True)
class StaticConfig:
    """int8 weights (per channel) and int8 activations from calibration, run by ONNX Runtime (QDQ)."""

    bits: int = 8
    granularity: Granularity | str = "channel"
    calibration: CalibrationConfig = CalibrationConfig()
    reduce_range: bool | str = "auto"
    max_metric_drop: float | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        check_bits(self.bits)
        if self.bits != 8:
            raise ConfigError("bits", f"static quantization runs int8 kernels and needs 8, got {self.bits}")
        _granularity(self, (PerTensor, PerChannel))
        _check_reduce_range(self)
        _check_nested(self, "calibration", CalibrationConfig)
        _check_common(self)


@dataclass(frozen=True)
class DynamicConfig:
    """int8 weights; activations quantized per batch at run time (Linear-heavy models)."""

    bits: int = 8
    granularity: Granularity | str = "channel"
    reduce_range: bool | str = "auto"
    max_metric_drop: float | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        check_bits(self.bits)
        if self.bits != 8:
            raise ConfigError("bits", f"dynamic quantization runs int8 kernels and needs 8, got {self.bits}")
        _granularity(self, (PerTensor, PerChannel))
        _check_reduce_range(self)
        _check_common(self)


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Weights stored as packed 2–8 bit integers, dequantized in forward; activations stay float."""

    bits: int = 4
    granularity: Granularity | str = "channel"
    group_size: int | None = None
    symmetric: bool = False
    max_metric_drop: float | None = None
    ignore: tuple[str, ...] = ()
    overrides: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        check_bits(self.bits)
        _granularity(self, (PerTensor, PerChannel, PerGroup))
        _check_bool(self, "symmetric")
        if isinstance(self.granularity, PerGroup):
            object.__setattr__(self, "group_size", self.granularity.size)
        _check_common(self)


@dataclass(frozen=True)
class KMeansConfig:
    """Weight sharing: 2^bits centroids per layer (one fixed at 0), optional centroid fine-tuning."""

    bits: int = 4
    finetune: FinetuneConfig | None = None
    iterations: int = 30
    max_metric_drop: float | None = None
    ignore: tuple[str, ...] = ()
    overrides: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        check_bits(self.bits)
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) \
                or not 1 <= self.iterations <= MAX_ITERATIONS:
            raise ConfigError("iterations", f"must be an integer in [1, {MAX_ITERATIONS}], got {self.iterations!r}")
        if self.finetune is not None:
            _check_nested(self, "finetune", FinetuneConfig)
        _check_common(self)


@dataclass(frozen=True)
class QATConfig:
    """Fake quantization with a straight-through estimator, fine-tuned, then converted.

    8 bits -> like StaticConfig (weights and activations int8 in ONNX Runtime);
    fewer bits -> like WeightOnlyConfig with the same granularity and symmetry.
    """

    bits: int = 8
    granularity: Granularity | str = "channel"
    symmetric: bool = True
    finetune: FinetuneConfig = FinetuneConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    reduce_range: bool | str = "auto"
    max_metric_drop: float | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        check_bits(self.bits)
        _granularity(self, (PerTensor, PerChannel))
        _check_bool(self, "symmetric")
        _check_reduce_range(self)
        if self.bits < 8 and self.reduce_range is True:
            raise ConfigError("reduce_range", "applies to 8-bit qat (int8 kernels); codes of fewer bits are "
                                              "decoded to float and cannot overflow")
        _check_nested(self, "finetune", FinetuneConfig)
        if self.bits == 8:  # the int8 activation ranges come from calibration
            _check_nested(self, "calibration", CalibrationConfig)
        if self.bits == 8 and not self.symmetric:
            raise ConfigError("symmetric", "8-bit QAT converts to int8 kernels whose weights are symmetric")
        _check_common(self)


METHODS: dict[str, type] = {
    "static": StaticConfig,
    "dynamic": DynamicConfig,
    "weight": WeightOnlyConfig,
    "kmeans": KMeansConfig,
    "qat": QATConfig,
}
_NESTED = {"calibration": CalibrationConfig, "finetune": FinetuneConfig}


def _build(cls: type, data: Mapping[str, Any], prefix: str, label: str):
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip("."), f"must be a mapping, got {data!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}", f"not applicable to {label}; allowed keys: {allowed}")
        if key in _NESTED and value is not None:
            value = _build(_NESTED[key], value, f"{prefix}{key}.", f"{key}")
        kwargs[key] = value
    return cls(**kwargs)


def config_from_mapping(data: Mapping[str, Any]):
    """Build the config of a recipe's ``quantize:`` mapping; ``method`` picks the config type.

    Args:
        data: e.g. ``{"method": "static", "bits": 8, "calibration": {"batches": 8}}``.
    Returns:
        StaticConfig, DynamicConfig, WeightOnlyConfig, KMeansConfig or QATConfig.
    Raises:
        ConfigError naming the unknown method, an unknown or inapplicable key, or a bad value.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("quantize", f"must be a mapping, got {data!r}")
    method = data.get("method")
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError("method", f"unknown quantization method {method!r}; {did_you_mean(method, METHODS)}"
                                     f"known: {sorted(METHODS)}")
    rest = {k: v for k, v in data.items() if k != "method"}
    return _build(METHODS[method], rest, "", f"method {method!r}")


def method_of(cfg) -> str:
    """The recipe ``method`` name of a config (``static``, ``dynamic``, ``weight``, ``kmeans``, ``qat``)."""
    for name, cls in METHODS.items():
        if isinstance(cfg, cls):
            return name
    raise ConfigError("quantize", f"{type(cfg).__name__} is not a quantization config; known: "
                                  f"{sorted(c.__name__ for c in METHODS.values())}")


def config_to_mapping(cfg) -> dict[str, Any]:
    """Inverse of :func:`config_from_mapping` (JSON-friendly), for manifests and reports."""
    out: dict[str, Any] = {"method": method_of(cfg)}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "granularity":
            value = granularity_key(value)
        elif dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
