"""Calibration batches in, activation ranges of layer inputs out (torch side)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim.prune.calibration import take_batches
from torchslim.quantize.config import CalibrationConfig
from torchslim.quantize.observers import make_observer


def as_inputs(inputs) -> tuple[torch.Tensor, ...]:
    """The model's positional inputs: one tensor, or a tuple/list of them."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def calibration_inputs(calibration: Iterable, n: int) -> list[tuple[torch.Tensor, ...]]:
    """The model inputs of the first ``n`` calibration batches, each a tuple of input tensors.

    A batch follows the pruning convention: a tensor of inputs, or ``(inputs, targets, ...)`` as a
    ``DataLoader(TensorDataset(x, y))`` yields; a model with several inputs takes ``((x1, x2), targets)``.
    """
    try:
        batches = [as_inputs(inputs) for inputs, _ in take_batches(calibration, n)]
    except TypeError as err:
        raise ConfigError("calibration", str(err)) from None
    if not batches:
        raise ConfigError("calibration", "the calibration set is empty")
    return batches


@torch.no_grad()
def observe_layer_inputs(model: nn.Module, layers: dict[str, nn.Module], batches, config: CalibrationConfig,
                         bits: int = 8) -> dict[str, tuple[float, float]]:
    """Range of each layer's input over the calibration batches, by the configured observer.

    Returns:
        {layer name: (lo, hi)}.
    """
    observers = {name: make_observer(config.observer, bits, **_options(config)) for name in layers}
    handles = [m.register_forward_pre_hook(lambda _m, args, n=name: observers[n].observe(args[0]))
               for name, m in layers.items()]
    device = next(model.parameters()).device
    try:
        model.eval()
        for inputs in batches:
            model(*(t.to(device) for t in inputs))
    finally:
        for h in handles:
            h.remove()
    return {name: obs.range() for name, obs in observers.items()}


def _options(config: CalibrationConfig) -> dict:
    return {"percentile": config.percentile} if config.observer == "percentile" else {}


def observer_factory(config: CalibrationConfig, bits: int = 8):
    """Zero-argument callable building a fresh observer of the configured kind."""
    return lambda: make_observer(config.observer, bits, **_options(config))
