"""Weight-only methods: affine 2–8 bit packed weights, and k-means weight sharing (codebook)."""

from __future__ import annotations

from torch import nn

from torchslim.quantize._registry import HandlerResult, QuantContext, register
from torchslim.quantize._select import layer_bits, set_submodule
from torchslim.quantize.codebook import cluster_weight
from torchslim.quantize.config import KMeansConfig, WeightOnlyConfig
from torchslim.quantize.modules import CodebookWeight, PackedWeight, QuantizedLayer, stored_bytes


def pack_layers_(model: nn.Module, bits: dict[str, int], granularity, symmetric: bool) -> HandlerResult:
    """Replace each named layer of ``model`` by a QuantizedLayer over a PackedWeight of its bits."""
    fp32 = quantized = 0
    for name, b in bits.items():
        layer = model.get_submodule(name)
        source = PackedWeight(layer.weight.detach(), b, granularity, symmetric)
        set_submodule(model, name, QuantizedLayer(layer, source))
        fp32 += layer.weight.numel() * 4
        quantized += stored_bytes(source)
    return HandlerResult(dict(bits), fp32, quantized)


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
    fp32 = quantized = 0
    for name, b in bits.items():
        layer = model.get_submodule(name)
        centroids, indices = cluster_weight(layer.weight, b, config.iterations)
        source = CodebookWeight(centroids, indices, b).to(layer.weight.device)
        set_submodule(model, name, QuantizedLayer(layer, source))
        fp32 += layer.weight.numel() * 4
        quantized += stored_bytes(source)
    if config.finetune is not None and ctx.finetune is not None and config.finetune.epochs > 0:
        ctx.finetune(model, config.finetune.epochs, config.finetune.lr)
    return HandlerResult(bits, fp32, quantized)
