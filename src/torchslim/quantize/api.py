"""``quantize_(model, config)``: the one verb of torchslim.quantize, and its report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from torch import nn

from torchslim._errors import ConfigError
from torchslim.quantize._calibrate import calibration_inputs
from torchslim.quantize._layout import attach_int8_onnx
from torchslim.quantize._registry import QuantContext, handler_for
from torchslim.quantize._select import check_layers, quantizable_layers
from torchslim.quantize.config import method_of
from torchslim.quantize.fallback import choose_fp32_layers

# the handlers register themselves on import
from torchslim.quantize import ptq, qat, weight_only  # noqa: F401,E402


@dataclass
class QuantReport:
    """What quantize_ did.

    layers: bits per quantized layer; kept_fp32: Linear/Conv layers left in fp32 (``ignore`` plus fallback);
    fallback: those the accuracy-aware fallback kept; sensitivity: metric drop per layer when quantized alone;
    onnx_model: the int8 ONNX model for ONNX Runtime (static, dynamic, 8-bit qat), else None.
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
    check_layers(model, config)
    ctx = QuantContext(batches=_materialise(calibration, config), finetune=finetune)
    all_layers = set(quantizable_layers(model))
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
    return QuantReport(method=method, layers=result.layers, kept_fp32=tuple(sorted(all_layers - set(result.layers))),
                       fallback=fallback, sensitivity=sensitivity, baseline_metric=baseline, metric=metric,
                       weight_bytes_fp32=result.weight_bytes_fp32, weight_bytes_quantized=result.weight_bytes_quantized,
                       onnx_model=result.onnx_model)
