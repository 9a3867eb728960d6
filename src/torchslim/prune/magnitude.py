"""Magnitude pruning (unstructured): zero the smallest |w| of every Linear/ConvNd layer and recurrent layer (its
weight matrices together), layer by layer or with one threshold across layers (on |w|, or on LAMP scores).

Self-attention's in-projection is a bare parameter of ``nn.MultiheadAttention``, the largest matrix of a
transformer block; :func:`project_attention_` first makes it a Linear module (``<attention>.in_proj``, the same
function), which the artifact records and a deployed model turns back into ``nn.MultiheadAttention``.
"""

from __future__ import annotations

from torch import nn

from torchslim._errors import ConfigError
from torchslim._recurrent import RECURRENT_BASES
from torchslim.prune._select import LayerSelector, count
from torchslim.prune.config import MagnitudeConfig
from torchslim.prune.masks import apply_masks_, magnitude_masks, mask_hook, masked_weight
from torchslim.prune.report import PruneReport, build_report, model_size, snapshot
from torchslim.prune.schedule import sparsity_at
from torchslim.quantize.attention import project_attention_

MAGNITUDE_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, *RECURRENT_BASES)


def magnitude_layers(model: nn.Module, selector: LayerSelector) -> dict[str, nn.Module]:
    """The Linear/ConvNd/recurrent layers not ignored; the final classifier included."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, MAGNITUDE_LAYERS) and not selector.is_ignored(n)}


def magnitude_step(layers: dict[str, nn.Module], config: MagnitudeConfig, selector: LayerSelector,
                   step: int, steps: int, previous: dict | None):
    """Masks for schedule step ``step`` of ``steps``; raises ConfigError if a layer would lose every weight."""
    weights = {n: masked_weight(m) for n, m in layers.items()}
    targets = {n: sparsity_at(selector.sparsity_for(n), step, steps) for n in layers}
    pooled = [n for n in layers if config.scope != "layer" and selector.override_for(n) is None]
    masks = {}
    if pooled:
        total = sum(weights[n].numel() for n in pooled)
        masks.update(magnitude_masks({n: weights[n] for n in pooled}, count(targets[pooled[0]], total), previous,
                                     lamp=config.scope == "lamp"))
    alone = [n for n in layers if n not in pooled]
    masks.update(magnitude_masks({n: weights[n] for n in alone},
                                 {n: count(targets[n], weights[n].numel()) for n in alone}, previous))
    emptied = [n for n, keep in masks.items() if not keep.any()]
    if emptied:
        raise ConfigError(selector.field_for(emptied[0]), f"would zero every weight of layer(s) "
                                                          f"{', '.join(emptied)}; lower it or ignore them")
    return masks


def prune_magnitude_(model: nn.Module, config: MagnitudeConfig, ctx) -> PruneReport:
    """Handler of :class:`MagnitudeConfig` for :func:`torchslim.prune.prune_`."""
    project_attention_(model)  # attention's in-projection becomes a Linear this pruning reaches
    selector = LayerSelector(model, config.sparsity, config.ignore, config.overrides)
    layers = magnitude_layers(model, selector)
    before, size_before = snapshot(layers), model_size(model)
    masks: dict = {}

    def step_fn(step: int, steps: int) -> None:
        masks.update(magnitude_step(layers, config, selector, step, steps, dict(masks)))
        apply_masks_(model, masks)

    after_step = mask_hook(model, masks)
    ctx.run_schedule(model, config, step_fn, after_step)
    return build_report("magnitude", list(layers), before, layers, size_before, model, {}, masks, after_step)
