"""Quantization-aware training: fake quantization with a straight-through estimator, then conversion.

Weights are fake-quantized (per channel by default) and, at 8 bits, each layer input too (running
min/max while training, initialised from calibration). After the caller's ``finetune`` the model is
converted: 8 bits → int8 codes + static activation ranges, and the int8 model for ONNX Runtime (the
fake-quantized weights are exactly representable, so ORT recomputes the same codes); fewer bits → packed
weight-only layers with the same codes (embedding tables, transposed convolutions and recurrent layers included). At conversion the layer input ranges are calibrated again, on the
same batches and with the same observer as the ORT model's, so torch and ORT quantize activations alike.
"""

from __future__ import annotations

from torch import nn

from torchslim._errors import ConfigError
from torchslim.export.cpu import weights_reduce_range
from torchslim.quantize._calibrate import observe_layer_inputs
from torchslim.quantize._fold import fold_conv_bn_
from torchslim.quantize._registry import HandlerResult, QuantContext, register
from torchslim.quantize._select import layer_bits, quantizable_layers, set_submodule
from torchslim.quantize.config import QATConfig
from torchslim.quantize.modules import (ActivationFakeQuant, FakeQuantWeight, PackedWeight, QuantizedLayer,
                                        replace_with_float_)
from torchslim.quantize.ptq import export_static, int8_result, weight_bytes
from torchslim.quantize.weight_only import _code_layers_, pack_layers_


def prepare_qat_(model: nn.Module, config: QATConfig, batches=None) -> dict[str, int]:
    """Insert fake quantizers in place (after folding Conv+BN). Returns the bits of each fake-quantized layer.

    Below 8 bits the model ends as packed codes, which store embedding tables, transposed convolutions and
    recurrent layers as well as Linear and Conv weights: all of them train through their fake quantizers (a tied
    weight once, shared by its holders). At 8 bits the int8 kernels run Linear and Conv layers only.
    """
    fold_conv_bn_(model)
    if config.bits < 8:
        bits = layer_bits(model, config.bits, config.ignore, embeddings=True)
        _code_layers_(model, bits, lambda weight, b: FakeQuantWeight(weight, b, config.granularity, config.symmetric))
        return bits
    reduce_range = weights_reduce_range(config.reduce_range)
    layers = quantizable_layers(model, config.ignore)
    ranges = observe_layer_inputs(model, layers, batches, config.calibration) if batches else {}
    for name, layer in layers.items():
        act = ActivationFakeQuant(8, mode="static")
        if name in ranges:
            act.set_range(*ranges[name])
        source = FakeQuantWeight(layer.weight, 8, config.granularity, config.symmetric, reduce_range)
        set_submodule(model, name, QuantizedLayer(layer, source, act))
    return dict.fromkeys(layers, 8)


def calibrate_input_ranges_(model: nn.Module, names, batches, calibration) -> None:
    """Set each named QuantizedLayer's input range from ``batches`` run with every activation in float.

    These are the values ONNX Runtime's calibration sees in the dequantized graph, so the torch model and the
    int8 ORT model quantize each layer input with the same range (the running ranges QAT tracked differ).
    """
    layers = {name: model.get_submodule(name) for name in names}
    quants = {name: layer.input_quant for name, layer in layers.items()}
    for layer in layers.values():
        layer.input_quant = None
    try:
        ranges = observe_layer_inputs(model, layers, batches, calibration)
    finally:
        for name, layer in layers.items():
            layer.input_quant = quants[name]
    for name, quant in quants.items():
        quant.set_range(*ranges[name])


@register(QATConfig)
def quantize_qat_(model: nn.Module, config: QATConfig, ctx: QuantContext) -> HandlerResult:
    """Prepare, fine-tune through ``ctx.finetune``, convert (see module docstring)."""
    if ctx.export and ctx.finetune is None and config.finetune.epochs > 0:
        raise ConfigError("finetune", "qat needs a finetune(model, epochs, lr) callable")
    if config.bits == 8 and ctx.export and not ctx.batches:
        raise ConfigError("calibration", "8-bit qat needs calibration batches for the int8 activation ranges")
    layers = prepare_qat_(model, config, ctx.batches)
    if ctx.finetune is not None and config.finetune.epochs > 0:
        ctx.finetune(model, config.finetune.epochs, config.finetune.lr)
    model.eval()
    if config.bits < 8:  # the fake-quantized weight has the same min/max, hence the same codes
        replace_with_float_(model, lambda layer: isinstance(layer.weight_source, FakeQuantWeight))
        return pack_layers_(model, layers, config.granularity, config.symmetric)
    # the grid prepare_qat_ chose (or, resumed, the one the stored fake quantizers record)
    reduce_range = any(model.get_submodule(name).weight_source.reduce_range for name in layers)
    for name in layers:  # same min/max as the fake quantizer saw, hence the same int8 codes
        layer = model.get_submodule(name)
        fq = layer.weight_source
        layer.weight_source = PackedWeight(fq.weight.detach(), 8, fq.granularity, fq.symmetric, fq.reduce_range)
    onnx_model = None
    if ctx.batches:
        calibrate_input_ranges_(model, layers, ctx.batches, config.calibration)
    if ctx.export:
        # plain layers left: the ignored ones, and those (a recurrent cell) int8 keeps float
        excluded = sorted(quantizable_layers(model, embeddings=True))
        onnx_model = export_static(model, ctx.batches, config, excluded, reduce_range)
    quantized = {name: model.get_submodule(name) for name in layers}
    return int8_result(model, quantized, weight_bytes(quantized), onnx_model)
