"""Weight-only methods: affine 2–8 bit packed weights, and k-means weight sharing (codebook), for Linear, Conv,
transposed Conv, Embedding and recurrent layers."""

from __future__ import annotations

import torch
from torch import nn

from torchslim._recurrent import RECURRENT, recurrent_weights
from torchslim._tied import tied_groups
from torchslim.quantize._registry import HandlerResult, QuantContext, register
from torchslim.quantize._select import layer_bits, set_submodule
from torchslim.quantize.codebook import cluster_weight
from torchslim.quantize.config import KMeansConfig, WeightOnlyConfig
from torchslim.quantize.modules import (CodebookWeight, PackedWeight, QuantizedLayer, QuantizedRecurrent,
                                        stored_bytes)


def _code_layers_(model: nn.Module, bits: dict[str, int], make_source) -> HandlerResult:
    """Replace each named layer of ``model`` by a QuantizedLayer over ``make_source(weight, bits)`` (a recurrent
    layer by a QuantizedRecurrent with a source per weight matrix).

    The other holders of a tied weight (a head reusing the embedding table) decode the same source: one set of
    codes for one tensor, as the model's author wrote it.
    """
    followers = {group[0]: group[1:] for group in tied_groups(model)}
    bits, fp32, quantized = dict(bits), 0, 0
    for name, b in list(bits.items()):
        layer = model.get_submodule(name)
        if isinstance(layer, QuantizedLayer):  # a tied holder already given its leader's codes
            continue
        if isinstance(layer, RECURRENT):
            weights = recurrent_weights(layer)
            sources = {w: make_source(weight, b) for w, weight in weights.items()}
            set_submodule(model, name, QuantizedRecurrent(layer, sources))
            fp32 += sum(weight.numel() * 4 for weight in weights.values())
            quantized += sum(stored_bytes(source) for source in sources.values())
            continue
        source = make_source(layer.weight, b)
        set_submodule(model, name, QuantizedLayer(layer, source))
        fp32 += layer.weight.numel() * 4
        quantized += stored_bytes(source)
        for other in followers.get(name, ()):
            set_submodule(model, other, QuantizedLayer(model.get_submodule(other), source))
            bits[other] = b
    return HandlerResult(bits, fp32, quantized)


def pack_layers_(model: nn.Module, bits: dict[str, int], granularity, symmetric: bool) -> HandlerResult:
    """Replace each named layer of ``model`` by a QuantizedLayer over a PackedWeight of its bits."""
    return _code_layers_(model, bits, lambda weight, b: PackedWeight(weight.detach(), b, granularity, symmetric))


@register(WeightOnlyConfig)
def quantize_weight_only_(model: nn.Module, config: WeightOnlyConfig, ctx: QuantContext) -> HandlerResult:
    """Affine-quantize Linear/Conv weights and embedding tables to packed integers, dequantized in forward."""
    bits = layer_bits(model, config.bits, config.ignore, config.overrides, embeddings=True)
    return pack_layers_(model, bits, config.granularity, config.symmetric)


@register(KMeansConfig)
def quantize_kmeans_(model: nn.Module, config: KMeansConfig, ctx: QuantContext) -> HandlerResult:
    """Cluster each layer's weights (embedding tables too) into a 2^bits codebook (0 fixed), then fine-tune the
    centroids.

    The fine-tuning callable trains every parameter of the model; in the quantized layers those are the
    centroids (and biases), so weights sharing a centroid move together.
    """
    bits = layer_bits(model, config.bits, config.ignore, config.overrides, embeddings=True)

    def codebook(weight: torch.Tensor, b: int) -> CodebookWeight:
        centroids, indices = cluster_weight(weight, b, config.iterations)
        return CodebookWeight(centroids, indices, b).to(weight.device)

    result = _code_layers_(model, bits, codebook)
    if config.finetune is not None and ctx.finetune is not None and config.finetune.epochs > 0:
        ctx.finetune(model, config.finetune.epochs, config.finetune.lr)
    return result
