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
from torchslim.quantize._select import covers_embeddings, int8_recurrent_layers, quantizable_layers
from torchslim.quantize.config import method_of


def _probe(model: nn.Module, config, ctx: QuantContext, evaluate: Callable[[nn.Module], float],
           ignore: tuple[str, ...]) -> float:
    """Metric of a copy of ``model`` quantized with ``ignore`` kept in fp32 (simulation: no export, no fine-tuning)."""
    trial = copy.deepcopy(model)
    probe_ctx = dataclasses.replace(ctx, finetune=None, export=False)
    handler_for(config)(trial, dataclasses.replace(config, ignore=tuple(ignore)), probe_ctx)
    return float(evaluate(trial))


def layer_sensitivity(model: nn.Module, config, ctx: QuantContext, evaluate: Callable[[nn.Module], float],
                      baseline: float) -> dict[str, float]:
    """Metric drop (baseline - metric) per layer when only that layer is quantized, most sensitive first."""
    layers = list(quantizable_layers(model, config.ignore, covers_embeddings(config)))
    if method_of(config) == "dynamic":
        layers += [n for n in int8_recurrent_layers(model, config.ignore) if n not in layers]
    drops = {}
    for name in layers:
        others = tuple(n for n in layers if n != name)
        drops[name] = baseline - _probe(model, config, ctx, evaluate, config.ignore + others)
    return dict(sorted(drops.items(), key=lambda kv: kv[1], reverse=True))


def choose_fp32_layers(model: nn.Module, config, ctx: QuantContext, evaluate: Callable[[nn.Module], float],
                       baseline: float, max_drop: float) -> tuple[tuple[str, ...], dict[str, float]]:
    """Smallest prefix of the sensitivity ranking whose fp32 fallback keeps the drop ≤ ``max_drop``.

    Every candidate is quantized in simulation (no export, no fine-tuning) and evaluated.
    Returns:
        (layer names kept in fp32, sensitivity per layer).
    """
    sensitivity = layer_sensitivity(model, config, ctx, evaluate, baseline)
    ranking = tuple(sensitivity)
    for k in range(len(ranking)):
        kept = ranking[:k]
        if baseline - _probe(model, config, ctx, evaluate, config.ignore + kept) <= max_drop:
            return kept, sensitivity
    return ranking, sensitivity  # every layer in fp32
