"""Calibration batches in, activation ranges of layer inputs out (torch side)."""

from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim.quantize.config import CalibrationConfig
from torchslim.quantize.observers import make_observer


def as_inputs(batch) -> tuple[torch.Tensor, ...]:
    """A calibration item is a tensor or a tuple/list of the model's input tensors."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def take_batches(calibration: Iterable | None, config: CalibrationConfig | None, need: str
                 ) -> list[tuple[torch.Tensor, ...]]:
    """The first ``config.batches`` items of ``calibration`` (all of them when config is None)."""
    if calibration is None:
        raise ConfigError("calibration", f"{need} needs calibration batches (an iterable of model inputs)")
    items = calibration if config is None else itertools.islice(calibration, config.batches)
    batches = [as_inputs(b) for b in items]
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
