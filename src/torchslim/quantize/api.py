"""``quantize_(model, config)``: the one verb of torchslim.quantize, and its report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from torch import nn

from torchslim._errors import ConfigError
from torchslim._parametrized import bake_parametrizations_
from torchslim._tied import tied_groups, tied_reason, tied_weights
from torchslim.prune._select import LayerSelector
from torchslim.quantize._calibrate import calibration_inputs
from torchslim.quantize._layout import attach_int8_onnx
from torchslim.quantize._registry import QuantContext, handler_for
from torchslim.quantize._select import (STORED_ONLY, check_layers, covers_embeddings, int8_recurrent_layers,
                                        is_quantizable, quantizable_layers)
from torchslim.quantize.attention import project_attention_
from torchslim.quantize.config import method_of
from torchslim.quantize.fallback import choose_fp32_layers
from torchslim.quantize.modules import QuantizedLayer, QuantizedRecurrent

# the handlers register themselves on import
from torchslim.quantize import ptq, qat, weight_only  # noqa: F401,E402


@dataclass
class QuantReport:
    """What quantize_ did.

    layers: bits per quantized layer; kept_fp32: Linear/Conv layers left in fp32 (``ignore`` plus fallback);
    fallback: those the accuracy-aware fallback kept; sensitivity: metric drop per layer when quantized alone;
    onnx_model: the int8 ONNX model for ONNX Runtime (static, dynamic, 8-bit qat), else None;
    float_layers: every weighted layer left in float and why (ignored, fallback, or the method does not apply).
    """

    method: str
    layers: dict[str, int]
    kept_fp32: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()
    sensitivity: dict[str, float] = field(default_factory=dict)
    baseline_metric: float | None = None
    metric: float | None = None
    weight_bytes_fp32: int = 0
    weight_bytes_quantized: int = 0
    onnx_model: bytes | None = field(default=None, repr=False)
    float_layers: dict[str, str] = field(default_factory=dict)

    def ort_session(self, intra_op_threads: int | None = None):
        """An OrtSession (torch tensors in and out) over the int8 ONNX model."""
        if self.onnx_model is None:
            raise ValueError(f"method {self.method!r} produces no ONNX Runtime model; use export_onnx")
        from torchslim.export.runtime import OrtSession
        return OrtSession(self.onnx_model, intra_op_threads)

    def save_onnx(self, path: str | Path) -> Path:
        """Write the int8 ONNX model to ``path``."""
        if self.onnx_model is None:
            raise ValueError(f"method {self.method!r} produces no ONNX Runtime model; use export_onnx")
        from torchslim.artifact import write_bytes_atomic

        return write_bytes_atomic(path, self.onnx_model)

def _materialise(calibration: Iterable | None, config) -> list | None:
    """Take the configured number of calibration batches once (handlers may run several times)."""
    if calibration is None:
        return None
    cal = getattr(config, "calibration", None)
    return calibration_inputs(calibration, cal.batches if cal is not None else 1)


def quantize_(model: nn.Module, config, *, calibration: Iterable | None = None,
              finetune: Callable[[nn.Module, int, float], object] | None = None,
              evaluate: Callable[[nn.Module], float] | None = None, baseline: float | None = None) -> QuantReport:
    """Quantize ``model`` in place with the method ``config`` selects.

    Args:
        model: float torch model; its Linear/Conv layers are replaced by quantized ones (left in eval mode).
        config: StaticConfig, DynamicConfig, WeightOnlyConfig, KMeansConfig or QATConfig.
        calibration: iterable of batches, each a tensor of inputs or ``(inputs, targets, ...)`` (a DataLoader
            over a TensorDataset(x, y) works; a model with several inputs takes ``((x1, x2), targets)``);
            static and 8-bit qat use ``config.calibration.batches`` of them, dynamic one as the export example.
        finetune: ``finetune(model, epochs, lr)``, used by kmeans (centroids) and qat.
        evaluate: ``evaluate(model) -> float`` (higher is better), needed when ``config.max_metric_drop`` is set.
        baseline: ``evaluate(model)`` before quantization when the caller already has it (saves one evaluation).
    Returns:
        QuantReport; for static/dynamic/8-bit qat ``report.ort_session()`` runs the int8 model, which also
        stays attached to ``model`` so that ``save_artifact`` stores it (until the model's weights change).
    Example:
        >>> report = quantize_(model, WeightOnlyConfig(bits=4, granularity="group", group_size=32))
    """
    handler = handler_for(config)
    method = method_of(config)
    bake_parametrizations_(model)  # weight_norm & co.: a weight the methods can replace
    project_attention_(model)  # attention's projections become Linear modules every method can reach
    check_layers(model, config)
    tied = tied_weights(model)
    if tied:
        selector = LayerSelector(model, 0, config.ignore)
        tied = {name: others for name, others in tied.items() if not selector.is_ignored(name)}  # said as ignored
        config = dataclasses.replace(config, ignore=tuple(config.ignore) + _tied_left_to_their_leader(model, config))
    ctx = QuantContext(batches=_materialise(calibration, config), finetune=finetune)
    all_layers = set(quantizable_layers(model, embeddings=covers_embeddings(config)))
    if method == "dynamic":
        all_layers |= set(int8_recurrent_layers(model))
    metric = None
    fallback: tuple[str, ...] = ()
    sensitivity: dict[str, float] = {}
    if config.max_metric_drop is not None:
        if evaluate is None:
            raise ConfigError("max_metric_drop", "needs an evaluate(model) -> float callable")
        model.eval()
        if baseline is None:
            baseline = float(evaluate(model))
        fallback, sensitivity = choose_fp32_layers(model, config, ctx, evaluate, baseline, config.max_metric_drop)
        config = dataclasses.replace(config, ignore=tuple(config.ignore) + fallback)
    result = handler(model, config, ctx)
    model.eval()  # new activation quantizers would otherwise track ranges as in QAT training
    if result.onnx_model is not None:
        attach_int8_onnx(model, result.onnx_model)  # save_artifact stores it beside the integer weights
    if config.max_metric_drop is not None:  # the fallback decided on it: report the metric reached
        metric = float(evaluate(model))
    else:
        baseline = None
    kept = tuple(sorted(all_layers - set(result.layers)))
    tied = {name: others for name, others in tied.items() if name not in result.layers and name not in fallback}
    return QuantReport(method=method, layers=result.layers, kept_fp32=kept,
                       fallback=fallback, sensitivity=sensitivity, baseline_metric=baseline, metric=metric,
                       weight_bytes_fp32=result.weight_bytes_fp32, weight_bytes_quantized=result.weight_bytes_quantized,
                       onnx_model=result.onnx_model,
                       float_layers=float_layers(model, method, kept, fallback, config.ignore, tied,
                                                 stores_tables=covers_embeddings(config)))


def _tied_left_to_their_leader(model: nn.Module, config) -> tuple[str, ...]:
    """The holders of tied weights the handler must not code on their own: for weight-only and k-means every holder
    but the first of each tie (the handler gives them the first one's codes), and a whole tie that ``ignore``
    touches; for the int8 methods, whose kernels read each layer's own weight, every holder."""
    groups = tied_groups(model)
    if not covers_embeddings(config):
        return tuple(name for group in groups for name in group)
    selector = LayerSelector(model, 0, config.ignore)
    left = []
    for group in groups:
        whole = any(selector.is_ignored(n) or not is_quantizable(model.get_submodule(n), True) for n in group)
        left.extend(group if whole else group[1:])
    return tuple(left)


_NOT_QUANTIZED = {  # weighted layers no method replaces, and why they stay float
    nn.Embedding: "an embedding table: a lookup, no int8 kernel to run it",
    nn.EmbeddingBag: "an embedding table: a lookup, no int8 kernel to run it",
    nn.MultiheadAttention: "attention with separate key/value sizes or extra key/value biases",
    nn.ConvTranspose1d: "a transposed convolution", nn.ConvTranspose2d: "a transposed convolution",
    nn.Conv3d: "a 3-D convolution",
    nn.LSTM: "a recurrent layer: static int8 and 8-bit qat keep its gates float (dynamic int8 computes an LSTM "
             "without proj_size in int8; weight-only, k-means and qat below 8 bits store it in codes)",
    **dict.fromkeys((nn.GRU, nn.RNN), "a recurrent layer: the int8 methods keep its gates float (ONNX Runtime "
                                      "has int8 kernels for LSTM only; weight-only, k-means and qat below 8 bits "
                                      "store them in codes)"),
    **dict.fromkeys((nn.GRUCell, nn.LSTMCell, nn.RNNCell), "a recurrent cell: the int8 methods keep its gates "
                                                          "float (weight-only, k-means and qat below 8 bits store "
                                                          "them in codes)"),
}


def float_layers(model: nn.Module, method: str, kept: Iterable[str], fallback: Iterable[str],
                 ignore: Iterable[str], tied: dict[str, tuple[str, ...]] | None = None, *,
                 stores_tables: bool = False) -> dict[str, str]:
    """{layer: why it stays float} for the weighted layers a quantized ``model`` still computes in float;
    ``stores_tables``: the method stores embedding tables, transposed convolutions and recurrent layers too.

    Normalization layers (BatchNorm, LayerNorm, GroupNorm) are not listed: they stay float by design (folded into
    the convolution where int8 kernels need it).
    """
    selector = LayerSelector(model, 0, ignore)
    reasons = {}
    tied = tied or {}
    for name in kept:
        if name in set(fallback):
            reasons[name] = "kept by the accuracy-aware fallback"
        elif name in tied:
            reasons[name] = tied_reason(tied[name])
        elif selector.is_ignored(name):
            reasons[name] = "ignored by the config"
        elif method == "dynamic":
            reasons[name] = ("dynamic int8 covers Linear and LSTM layers only (ONNX Runtime's MatMulInteger and "
                             "DynamicQuantizeLSTM)")
        else:
            reasons[name] = f"not quantized by {method}"
    wrapped: tuple[str, ...] = ()  # the float modules a quantized layer runs are not float layers of the model
    for name, module in model.named_modules():
        if wrapped and name.startswith(wrapped):
            continue
        if isinstance(module, (QuantizedLayer, QuantizedRecurrent)):
            wrapped += (f"{name}.",)
            continue
        if name in tied:
            reasons[name] = tied_reason(tied[name])
            continue
        if name in reasons:  # a layer the method covers, kept float (ignored, fallback): said above
            continue
        if type(module) in STORED_ONLY and stores_tables:  # the first loop said why, if kept
            if getattr(module, "max_norm", None) is not None:
                reasons[name] = "an embedding with max_norm: its lookup rescales the table in place"
            continue
        for kind, why in _NOT_QUANTIZED.items():
            if type(module) is kind or (kind is nn.MultiheadAttention and isinstance(module, kind)):
                reasons[name] = why
        if isinstance(module, nn.modules.conv._ConvNd) and getattr(module, "padding_mode", "zeros") != "zeros":
            reasons[name] = f"a convolution with padding_mode {module.padding_mode!r}"
    return dict(sorted(reasons.items()))
