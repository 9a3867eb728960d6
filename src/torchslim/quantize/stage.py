"""The ``quantize`` recipe stage: ``- quantize: {method: static, calibration: {batches: 8}}``.

The stage's keys are exactly those of :func:`torchslim.quantize.config_from_mapping` (``method`` picks the config).
Calibration batches come from the training split's inputs; kmeans and qat fine-tune through the run's training
loop; the accuracy-aware fallback scores on the validation split.

Metric-drop budget: a stage's own ``max_metric_drop`` always wins (``max_metric_drop: null`` turns the fallback
off). When the stage does not name it, the domain's constraint applies to post-training methods (static, dynamic,
weight, kmeans without fine-tuning), whose per-layer probes measure exactly the model they will produce:
``constraints.max_metric_drop`` minus the validation drop earlier stages already spent since the baseline, or
the margin above ``constraints.min_metric``. Methods that fine-tune after the probes (qat, kmeans with finetune)
use the fallback only when the stage asks, since probes without fine-tuning overstate their drop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch.utils.data import DataLoader

from torchslim._errors import ConfigError, by_reason
from torchslim.export.cpu import weights_reduce_range
from torchslim.quantize._select import check_layers
from torchslim.quantize.api import quantize_
from torchslim.quantize.config import config_from_mapping, config_to_mapping, method_of
from torchslim.stages import StageHandler, register_stage

if TYPE_CHECKING:
    from torchslim.runner import RunContext

CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class QuantizeStage:
    """A quantize config plus whether the stage named its own ``max_metric_drop``."""

    config: Any
    stage_sets_drop: bool = False

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        """The stage's keys as written (defaults filled in), for the manifest's recipe."""
        out = config_to_mapping(self.config)
        if not self.stage_sets_drop:
            out.pop("max_metric_drop")
        return out


def parse_quantize_stage(body: Any, *, prefix: str, source: Optional[str]) -> QuantizeStage:
    """Validate a recipe's ``quantize`` mapping; errors name the key, e.g. ``stages[1].quantize.bits``."""
    try:
        config = config_from_mapping(body)
    except ConfigError as exc:
        raise exc.within(prefix, source) from None
    return QuantizeStage(config, stage_sets_drop="max_metric_drop" in body)


def _int8(config: Any) -> bool:
    """Whether the method runs int8 kernels (there is none below 8 bits)."""
    return method_of(config) in ("static", "dynamic") or (method_of(config) == "qat" and config.bits == 8)


def runtime_warning(stage: QuantizeStage, runtime: str) -> Optional[str]:
    """Why this stage's model cannot run faster on ``runtime``, or None: int8 methods are executed by ONNX Runtime
    only; under ``runtime: torch`` they are simulated (each input quantized and dequantized, float arithmetic)."""
    method = method_of(stage.config)
    if runtime == "torch" and _int8(stage.config):
        return (f"method {method} runs int8 kernels only under runtime: onnxruntime; under runtime: torch it is "
                f"simulated and will measure slower than its baseline (set the domain's runtime: onnxruntime)")
    return None


def _fine_tunes(config: Any) -> bool:
    finetune = getattr(config, "finetune", None)
    return finetune is not None and finetune.epochs > 0


def check_quantize_stage(ctx: "RunContext", stage: QuantizeStage) -> None:
    """Before any training: ignore/overrides patterns match modules, a group size divides every quantized row, and
    an int8 method's model can be exported to ONNX (its int8 graph is built from the export)."""
    check_layers(ctx.model, stage.config)
    if _int8(stage.config):
        from torchslim.export.onnx_export import check_exportable

        check_exportable(ctx.model, "method", f"{method_of(stage.config)} runs on the model's ONNX export",
                         "use weight or kmeans")


def metric_drop_budget(ctx: "RunContext", stage: QuantizeStage, before: float) -> tuple[Optional[float], str]:
    """The ``max_metric_drop`` the fallback uses, and where it came from (``stage``, ``domain`` or ``none``)."""
    if stage.stage_sets_drop:
        return stage.config.max_metric_drop, "stage" if stage.config.max_metric_drop is not None else "none"
    constraints = ctx.domain.constraints
    if _fine_tunes(stage.config):
        return None, "none"
    if constraints.max_metric_drop is not None:
        from torchslim.evaluate import compute_metric

        spent = 0.0
        if ctx.baseline is not None:  # earlier compressing stages may have used part of the budget
            spent = max(0.0, compute_metric(ctx.baseline, ctx.splits.val, ctx.metric) - before)
        return max(0.0, constraints.max_metric_drop - spent), "domain"
    if constraints.min_metric is not None:
        return max(0.0, before - constraints.min_metric), "domain"
    return None, "none"


def _train_settings(ctx: "RunContext") -> dict[str, Any]:
    """Batch size, optimizer, weight decay and augmentation of the recipe's last train stage before this one."""
    settings: dict[str, Any] = {}
    for s in ctx.recipe.stages:
        if s.name == "train" and s.index < ctx.stage_index:
            settings = {k: getattr(s.config, k) for k in ("batch_size", "weight_decay", "optimizer", "augment")}
    return settings


def calibration_batches(ctx: "RunContext", config: Any) -> list[torch.Tensor]:
    """Shuffled (seeded) batches of training inputs: ``calibration.batches`` of them, or one example batch."""
    cal = getattr(config, "calibration", None)
    n = cal.batches if cal is not None else 1
    inputs = ctx.splits.train.tensors[0]  # (N, *input_shape)
    gen = torch.Generator().manual_seed(ctx.seed + ctx.stage_index)
    loader = DataLoader(inputs, batch_size=CALIBRATION_BATCH, shuffle=True, generator=gen)
    batches = []
    for batch in loader:
        if len(batches) == n:
            break
        batches.append(batch)
    if not batches:
        raise ConfigError("calibration", "the training split holds no inputs to calibrate on")
    return batches


def _run_quantize(ctx: "RunContext", stage: QuantizeStage) -> dict[str, Any]:
    from torchslim.train import TrainConfig

    cfg, method = stage.config, method_of(stage.config)
    before = ctx.validate()
    budget, budget_from = metric_drop_budget(ctx, stage, before)
    if budget != cfg.max_metric_drop:
        cfg = dataclasses.replace(cfg, max_metric_drop=budget)
    settings = _train_settings(ctx)

    def finetune(model: torch.nn.Module, epochs: int, lr: float) -> None:
        try:
            ctx.fit(model, TrainConfig(epochs=epochs, lr=lr, **settings), desc=f"{method} finetune")
        except ConfigError as exc:  # e.g. the loss diverged: name the fine-tune's lr
            raise exc.within("finetune") from None

    try:
        report = quantize_(ctx.model, cfg, calibration=calibration_batches(ctx, cfg), finetune=finetune,
                           evaluate=ctx.validate, baseline=before)
    except ConfigError as exc:
        raise exc.within(f"stages[{ctx.stage_index}].quantize", ctx.recipe.source) from None
    after = report.metric if report.metric is not None else ctx.validate()
    names = sorted(report.layers)
    ctx.log(f"quantize: {method}, {len(names)} layer(s) quantized, {len(report.float_layers)} kept in float")
    for line in by_reason("quantize: kept in float", report.float_layers):
        ctx.log(line)
    reduce_range = _int8(cfg) and weights_reduce_range(cfg.reduce_range)
    if reduce_range and cfg.reduce_range == "auto":
        ctx.log("quantize: int8 weights in [-64, 64] (reduce_range): this CPU has no VNNI, and ONNX Runtime's int8 "
                "products on it overflow with full 8-bit weights")
    return {"method": method, "bits": cfg.bits, "layers_quantized": names, "reduce_range": reduce_range,
            "layer_bits": [report.layers[n] for n in names], "kept_fp32": list(report.kept_fp32),
            "fallback": list(report.fallback), "float_layers": report.float_layers, "max_metric_drop": budget,
            "max_metric_drop_from": budget_from,
            "weight_bytes_fp32": report.weight_bytes_fp32, "weight_bytes_quantized": report.weight_bytes_quantized,
            "int8_onnx": report.onnx_model is not None, "val_metric_before": before,
            "val_metric": after}


register_stage(StageHandler("quantize", QuantizeStage, _run_quantize, compresses=True,
                            check=check_quantize_stage, parser=parse_quantize_stage))
