"""Config type → handler registry, and what handlers receive and return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from torchslim._errors import ConfigError


@dataclass
class QuantContext:
    """Caller-supplied pieces a handler may need.

    batches: calibration batches (tuples of input tensors), already materialised, or None.
    finetune: ``finetune(model, epochs, lr)`` training callable, or None.
    export: build the ONNX Runtime model (False while ranking layer sensitivity: torch simulation only).
    """

    batches: list | None = None
    finetune: Callable[[nn.Module, int, float], object] | None = None
    export: bool = True


@dataclass
class HandlerResult:
    """What one method did: bits per quantized layer, weight storage, and the ORT model if any."""

    layers: dict[str, int]
    weight_bytes_fp32: int = 0
    weight_bytes_quantized: int = 0
    onnx_model: bytes | None = None


_HANDLERS: dict[type, Callable[[nn.Module, object, QuantContext], HandlerResult]] = {}


def register(config_type: type):
    """Decorator: make ``fn(model, config, ctx) -> HandlerResult`` the handler of ``config_type``."""
    def wrap(fn):
        _HANDLERS[config_type] = fn
        return fn
    return wrap


def handler_for(config) -> Callable[[nn.Module, object, QuantContext], HandlerResult]:
    """The handler registered for ``type(config)``; ConfigError listing the known configs otherwise."""
    try:
        return _HANDLERS[type(config)]
    except KeyError:
        known = sorted(t.__name__ for t in _HANDLERS)
        raise ConfigError("quantize", f"no quantization handler for {type(config).__name__}; known: {known}") from None
