"""Post-training int8: static (calibrated activations) and dynamic (run-time activations) for ONNX Runtime.

The torch model is changed in place into a simulation of what ORT computes (int8 per-channel symmetric
weights stored as integer codes + scales, per-tensor uint8 activations at each layer input), so evaluating
it in torch tracks the int8 ORT model; ``HandlerResult.onnx_model`` is the int8 ONNX model itself.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from torchslim._errors import ConfigError
from torchslim._recurrent import is_recurrent, recurrent_weights
from torchslim.export.cpu import weights_reduce_range
from torchslim.quantize._calibrate import observe_layer_inputs, observer_factory
from torchslim.quantize._fold import fold_conv_bn_
from torchslim.quantize._registry import HandlerResult, QuantContext, register
from torchslim.quantize._select import int8_recurrent_layers, quantizable_layers, set_submodule
from torchslim.quantize.config import DynamicConfig, StaticConfig
from torchslim.quantize.granularity import PerChannel
from torchslim.quantize.modules import (ActivationFakeQuant, PackedWeight, QuantizedLayer, QuantizedRecurrent,
                                        stored_bytes, weight_sources_of)


def weight_bytes(layers: dict[str, nn.Module]) -> int:
    """fp32 bytes of the layers' weight matrices (a recurrent layer's all of them)."""
    return sum(sum(w.numel() for w in recurrent_weights(m).values()) * 4 if is_recurrent(m) else m.weight.numel() * 4
               for m in layers.values())


def int8_result(model: nn.Module, layers: dict[str, nn.Module], fp32: int, onnx_model: bytes | None
                ) -> HandlerResult:
    """8 bits per layer, and the fp32 bytes of the original weights against what the quantized layers store."""
    int8 = sum(stored_bytes(source) for name in layers for source in weight_sources_of(model.get_submodule(name)))
    return HandlerResult({n: 8 for n in layers}, fp32, int8, onnx_model)


def _simulate(model: nn.Module, layers: dict[str, nn.Module], granularity,
              input_quant: Callable[[str], nn.Module], reduce_range: bool) -> None:
    """Swap each layer for int8 codes (symmetric, as ORT's weights) plus an activation quantizer; a recurrent
    layer's matrices each for their codes (its activations stay float here: ONNX Runtime quantizes its input
    sequence and, at every step, its hidden state)."""
    def codes(weight):
        return PackedWeight(weight.detach(), 8, granularity, symmetric=True, reduce_range=reduce_range)

    for name, layer in layers.items():
        if is_recurrent(layer):
            set_submodule(model, name, QuantizedRecurrent(layer, {w: codes(m) for w, m in
                                                                  recurrent_weights(layer).items()}))
        else:
            set_submodule(model, name, QuantizedLayer(layer, codes(layer.weight), input_quant(name)))


def static_input_quant(ranges: dict[str, tuple[float, float]]) -> Callable[[str], ActivationFakeQuant]:
    """Builds the fixed-range activation quantizer of a layer from its calibrated (lo, hi)."""
    def make(name: str) -> ActivationFakeQuant:
        q = ActivationFakeQuant(8, mode="static")
        q.set_range(*ranges[name])
        return q
    return make


def export_static(model: nn.Module, batches, config, excluded: list[str], reduce_range: bool) -> bytes:
    """fp32 ONNX of ``model`` (quantized layers exported dequantized) → observer ranges on every tensor → QDQ
    int8 model (see export.ort_quant)."""
    from torchslim.export.onnx_export import input_names, to_onnx_proto
    from torchslim.export.ort_quant import collect_ranges, nodes_of_modules, quantize_static_onnx

    proto = to_onnx_proto(model, batches[0])
    names = input_names(len(batches[0]))
    feeds = [{n: t.detach().cpu().numpy() for n, t in zip(names, inputs)} for inputs in batches]
    ranges = collect_ranges(proto, feeds, observer_factory(config.calibration))
    return quantize_static_onnx(proto, ranges, per_channel=isinstance(config.granularity, PerChannel),
                                nodes_to_exclude=nodes_of_modules(proto, excluded), reduce_range=reduce_range)


@register(StaticConfig)
def quantize_static_(model: nn.Module, config: StaticConfig, ctx: QuantContext) -> HandlerResult:
    """Fold Conv+BN, calibrate, export the int8 QDQ model, and turn ``model`` into its torch simulation."""
    if not ctx.batches:
        raise ConfigError("calibration", "static quantization needs calibration batches")
    fold_conv_bn_(model)
    layers = quantizable_layers(model, config.ignore)
    # kept float in ONNX Runtime too: ignored layers, and layers (a recurrent cell's products) ORT could quantize
    # though the torch model keeps them float
    excluded = sorted(set(quantizable_layers(model, embeddings=True)) - set(layers))
    reduce_range = weights_reduce_range(config.reduce_range)
    onnx_model = export_static(model, ctx.batches, config, excluded, reduce_range) if ctx.export else None
    ranges = observe_layer_inputs(model, layers, ctx.batches, config.calibration)
    fp32 = weight_bytes(layers)
    _simulate(model, layers, config.granularity, static_input_quant(ranges), reduce_range)
    return int8_result(model, layers, fp32, onnx_model)


@register(DynamicConfig)
def quantize_dynamic_(model: nn.Module, config: DynamicConfig, ctx: QuantContext) -> HandlerResult:
    """int8 Linear and LSTM weights, activations quantized per batch; ONNX export needs one example batch."""
    from torchslim.export.onnx_export import to_onnx_proto
    from torchslim.export.ort_quant import nodes_of_modules, quantize_dynamic_onnx

    # ORT's dynamic quantizer handles MatMul (Linear) and LSTM only; convolutions stay float in both worlds.
    # BatchNorm is folded as the ONNX export folds it, so the float convolutions' weights are the exported ones,
    # stored once.
    fold_conv_bn_(model)
    layers = {n: m for n, m in quantizable_layers(model, config.ignore).items() if isinstance(m, nn.Linear)}
    layers.update(int8_recurrent_layers(model, config.ignore))
    # kept float in ONNX Runtime too: ignored layers, and layers (a recurrent cell's products) ORT could quantize
    # though the torch model keeps them float
    excluded = sorted(set(quantizable_layers(model, embeddings=True)) - set(layers))
    reduce_range = weights_reduce_range(config.reduce_range)
    onnx_model = None
    if ctx.export:
        if not ctx.batches:
            raise ConfigError("calibration", "dynamic quantization needs one example batch to export the model")
        proto = to_onnx_proto(model, ctx.batches[0])  # a copy: the model itself is not touched
        onnx_model = quantize_dynamic_onnx(proto, per_channel=isinstance(config.granularity, PerChannel),
                                           nodes_to_exclude=nodes_of_modules(proto, excluded),
                                           reduce_range=reduce_range)
    fp32 = weight_bytes(layers)
    _simulate(model, layers, config.granularity, lambda _name: ActivationFakeQuant(8, mode="dynamic"), reduce_range)
    return int8_result(model, layers, fp32, onnx_model)
