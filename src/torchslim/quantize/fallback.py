"""Accuracy-aware fallback: keep the most quantization-sensitive layers in fp32 until the metric drop fits.

Policy only: the quantization itself is whatever handler the config selects, run on copies of the model.
Sensitivity of a layer = metric drop when that layer alone is quantized (torch simulation, no fine-tuning).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable

from torch import nn

from torchslim.quantize._registry import QuantContext, handler_for
from torchslim.quantize._select import quantizable_layers


def layer_sensitivity(model: nn.Module, config, ctx: QuantContext, evaluate: Callable[[nn.Module], float],
                      baseline: float) -> dict[str, float]:
    """Metric drop (baseline - metric) per layer when only that layer is quantized, most sensitive first."""
    layers = list(quantizable_layers(model, config.ignore))
    probe_ctx = dataclasses.replace(ctx, finetune=None, export=False)
    drops = {}
    for name in layers:
        others = tuple(n for n in layers if n != name)
        trial = copy.deepcopy(model)
        handler_for(config)(trial, _with_ignore(config, config.ignore + others), probe_ctx)
        drops[name] = baseline - float(evaluate(trial))
    return dict(sorted(drops.items(), key=lambda kv: kv[1], reverse=True))


def _with_ignore(config, ignore: tuple[str, ...]):
    return dataclasses.replace(config, ignore=tuple(ignore))


def choose_fp32_layers(model: nn.Module, config, ctx: QuantContext, evaluate: Callable[[nn.Module], float],
                       baseline: float, max_drop: float) -> tuple[tuple[str, ...], dict[str, float]]:
    """Smallest prefix of the sensitivity ranking whose fp32 fallback keeps the drop ≤ ``max_drop``.

    Every candidate is quantized in simulation (no export, no fine-tuning) and evaluated.
    Returns:
        (layer names kept in fp32, sensitivity per layer).
    """
    sensitivity = layer_sensitivity(model, config, ctx, evaluate, baseline)
    probe_ctx = dataclasses.replace(ctx, finetune=None, export=False)
    ranking = list(sensitivity)
    for k in range(len(ranking) + 1):
        kept = tuple(ranking[:k])
        if k == len(ranking):
            return kept, sensitivity
        trial = copy.deepcopy(model)
        handler_for(config)(trial, _with_ignore(config, config.ignore + kept), probe_ctx)
        if baseline - float(evaluate(trial)) <= max_drop:
            return kept, sensitivity
    return tuple(ranking), sensitivity
