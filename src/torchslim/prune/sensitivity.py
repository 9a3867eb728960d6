"""Per-layer sensitivity: how much the metric drops when one layer alone is pruned, and the per-layer
sparsities (``overrides``) that keep the drop under a bound."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim._errors import ConfigError
from torchslim.prune._select import LayerSelector
from torchslim.prune.api import prune_
from torchslim.prune.attention import convert_attention_
from torchslim.prune.calibration import take_batches
from torchslim.prune.config import MagnitudeConfig, Schedule, StructuredConfig
from torchslim.prune.graph import build_graph, channel_units, head_units
from torchslim.prune.magnitude import magnitude_layers
from torchslim.quantize.attention import project_attention_

__all__ = ["SensitivityTable", "sensitivity", "overrides_from_sensitivity"]


@dataclass(frozen=True)
class SensitivityTable:
    """Metric of the model with one layer pruned at one sparsity.

    Attributes:
        baseline: metric of the unpruned model.
        rows: (layer, sparsity, metric); metric is NaN where that sparsity would remove the whole layer.
        higher_is_better: direction of the metric (accuracy: True; loss: False).
    """

    baseline: float
    rows: tuple[tuple[str, float, float], ...]
    higher_is_better: bool = True

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(r[0] for r in self.rows))

    def metric(self, layer: str, sparsity: float) -> float:
        for name, s, m in self.rows:
            if name == layer and s == sparsity:
                return m
        raise KeyError((layer, sparsity))

    def drop(self, metric: float) -> float:
        """How much worse ``metric`` is than the baseline (positive = worse)."""
        return self.baseline - metric if self.higher_is_better else metric - self.baseline


def _layer_names(model: nn.Module, config, example_inputs) -> list[str]:
    probe = copy.deepcopy(model)
    if isinstance(config, MagnitudeConfig):
        project_attention_(probe)  # as the pruning will: attention's in-projection is a layer of its own
        return list(magnitude_layers(probe, LayerSelector(probe, config.sparsity, config.ignore, config.overrides)))
    selector = LayerSelector(model, config.sparsity, config.ignore, config.overrides)
    convert_attention_(probe)
    graph = build_graph(probe, example_inputs)
    return [u.name for u in channel_units(probe, graph, selector)] + [h.name for h in head_units(probe, selector)]


def sensitivity(model: nn.Module, config: MagnitudeConfig | StructuredConfig, sparsities: Sequence[float],
                evaluate: Callable[[nn.Module], float], *, calibration: Iterable | None = None,
                loss_fn: Callable | None = None, example_inputs: Any = None,
                higher_is_better: bool = True) -> SensitivityTable:
    """Prune each prunable layer alone (on a copy) at each sparsity and evaluate.

    Args:
        model: the trained model; left unchanged.
        config: the method, importance, scope and ``ignore`` to use; its sparsity, overrides, schedule and
            finetune are replaced (one layer at a time, one shot, no fine-tuning).
        sparsities: the sparsities to try, each in [0, 1).
        evaluate: ``evaluate(model) -> metric``.
        calibration, loss_fn, example_inputs: as for :func:`prune_`.
        higher_is_better: direction of the metric.

    Returns:
        a SensitivityTable.
    """
    if not isinstance(config, (MagnitudeConfig, StructuredConfig)):
        raise TypeError(f"sensitivity needs a MagnitudeConfig or StructuredConfig, got {type(config).__name__}")
    if example_inputs is None and calibration is not None:
        batches = take_batches(calibration, 1)
        example_inputs = batches[0][0] if batches else None
    baseline = float(evaluate(copy.deepcopy(model)))
    rows = []
    for layer in _layer_names(model, config, example_inputs):
        for s in sparsities:
            one = dataclasses.replace(config, sparsity=0.0, overrides={layer: s}, schedule=Schedule(),
                                      finetune=None)
            pruned = copy.deepcopy(model)
            try:
                prune_(pruned, one, calibration=calibration, loss_fn=loss_fn, example_inputs=example_inputs)
            except ConfigError:
                rows.append((layer, float(s), math.nan))  # the whole layer would go
                continue
            rows.append((layer, float(s), float(evaluate(pruned))))
    return SensitivityTable(baseline, tuple(rows), higher_is_better)


def overrides_from_sensitivity(table: SensitivityTable, max_drop: float) -> dict[str, float]:
    """Per layer, the largest tested sparsity whose metric, and that of every smaller sparsity, stays within
    ``max_drop`` of the baseline; 0.0 when none does. Feed the result to a config's ``overrides``.

    Args:
        table: from :func:`sensitivity`.
        max_drop: largest tolerated metric drop (in the metric's units), >= 0.
    """
    if max_drop < 0:
        raise ConfigError("max_drop", f"must be >= 0, got {max_drop}")
    out = {}
    for layer in table.layers:
        best = 0.0
        for _, s, m in sorted((r for r in table.rows if r[0] == layer), key=lambda r: r[1]):
            if math.isnan(m) or table.drop(m) > max_drop:
                break
            best = s
        out[layer] = best
    return out
