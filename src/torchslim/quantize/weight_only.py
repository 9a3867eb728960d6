"""Weight-only methods: affine 2–8 bit packed weights, and k-means weight sharing (codebook)."""

from __future__ import annotations

from torch import nn

from torchslim.quantize._registry import HandlerResult, QuantContext, register
from torchslim.quantize._select import layer_bits, quantizable_layers, set_submodule
from torchslim.quantize.codebook import cluster_weight
from torchslim.quantize.config import KMeansConfig, WeightOnlyConfig
from torchslim.quantize.modules import CodebookWeight, PackedWeight, QuantizedLayer


def _stored_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.buffers()) + list(module.parameters()))


def pack_layers_(model: nn.Module, bits: dict[str, int], granularity, symmetric: bool) -> HandlerResult:
    """Replace each named layer of ``model`` by a QuantizedLayer over a PackedWeight of its bits."""
    fp32 = quantized = 0
    for name, b in bits.items():
        layer = model.get_submodule(name)
        source = PackedWeight(layer.weight.detach(), b, granularity, symmetric)
        set_submodule(model, name, QuantizedLayer(layer, source))
        fp32 += layer.weight.numel() * 4
        quantized += _stored_bytes(source)
    return HandlerResult(dict(bits), fp32, quantized)


@register(WeightOnlyConfig)
def quantize_weight_only_(model: nn.Module, config: WeightOnlyConfig, ctx: QuantContext) -> HandlerResult:
    """Affine-quantize Linear/Conv weights to packed integers, dequantized in forward."""
    layers = quantizable_layers(model, config.ignore)
    return pack_layers_(model, layer_bits(model, layers, config.bits, config.overrides), config.granularity,
                        config.symmetric)


@register(KMeansConfig)
def quantize_kmeans_(model: nn.Module, config: KMeansConfig, ctx: QuantContext) -> HandlerResult:
    """Cluster each layer's weights into a 2^bits codebook (0 fixed), then fine-tune the centroids.

    The fine-tuning callable trains every parameter of the model; in the quantized layers those are the
    centroids (and biases), so weights sharing a centroid move together.
    """
    layers = quantizable_layers(model, config.ignore)
    bits = layer_bits(model, layers, config.bits, config.overrides)
    fp32 = quantized = 0
    for name, layer in layers.items():
        centroids, indices = cluster_weight(layer.weight, bits[name], config.iterations)
        source = CodebookWeight(centroids, indices, bits[name]).to(layer.weight.device)
        set_submodule(model, name, QuantizedLayer(layer, source))
        fp32 += layer.weight.numel() * 4
        quantized += _stored_bytes(source)
    if config.finetune is not None and ctx.finetune is not None and config.finetune.epochs > 0:
        ctx.finetune(model, config.finetune.epochs, config.finetune.lr)
    return HandlerResult(bits, fp32, quantized)
