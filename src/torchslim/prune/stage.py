"""The ``prune`` recipe stage: ``- prune: {method: magnitude, sparsity: 0.9, scope: global, finetune: {...}}``.

The keys are those of the method's config (see :mod:`torchslim.prune.config`) plus ``sensitivity``, which first
measures each layer's sensitivity on the validation split and sets the ``overrides`` of the layers not overridden
by hand. Fine-tuning runs through the run's one training loop, one checkpoint per schedule step, so an interrupted
run resumes where it stopped. Magnitude masks join the run's step hooks: later training keeps the zeros.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchslim._errors import ConfigError, by_reason
from torchslim._recurrent import is_recurrent
from torchslim._validation import finite_float
from torchslim.distributed import is_distributed, module_device, rank_digests
from torchslim.prune._select import LayerSelector, check_names
from torchslim.prune.api import prune_
from torchslim.prune.config import (ActivationConfig, MagnitudeConfig, Schedule, StructuredConfig,
                                    _check_fraction, config_from_mapping, value_object)
from torchslim.prune.masks import mask_hook, masked_weight
from torchslim.prune.report import PruneReport
from torchslim.prune.sensitivity import SensitivityTable, overrides_from_sensitivity, sensitivity
from torchslim.prune.structured import _outputs
from torchslim.quantize.attention import project_attention_
from torchslim.stages import StageHandler, register_stage

if TYPE_CHECKING:
    from torchslim.runner import RunContext

__all__ = ["PruneStage", "SensitivitySpec", "parse_stage"]

CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class SensitivitySpec:
    """``sensitivity: {sparsities: [0.5, 0.7, 0.9, 0.95], max_drop: 0.01}``: each layer is pruned alone at each
    sparsity and validated; a layer gets the largest sparsity whose metric drop stays within ``max_drop``."""

    sparsities: tuple[float, ...] = (0.5, 0.7, 0.9, 0.95)
    max_drop: float = 0.01

    def __post_init__(self):
        s = self.sparsities
        if isinstance(s, (str, bytes)) or not isinstance(s, (list, tuple)) or not s:
            raise ConfigError("sparsities", f"must be a non-empty list of sparsities in [0, 1), got {s!r}")
        object.__setattr__(self, "sparsities", tuple(_check_fraction(f"sparsities[{i}]", v) for i, v in enumerate(s)))
        d = self.max_drop
        if finite_float(d) is None or d < 0:
            raise ConfigError("max_drop", f"must be a number >= 0, got {d!r}")


@dataclass(frozen=True)
class PruneStage:
    """A parsed ``prune`` stage: the method's config and the optional sensitivity analysis."""

    config: MagnitudeConfig | ActivationConfig | StructuredConfig
    sensitivity: SensitivitySpec | None = None

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        """The stage as recipe keys with every default filled in (JSON types), for the artifact's manifest."""
        method = {MagnitudeConfig: "magnitude", ActivationConfig: "activation",
                  StructuredConfig: "structured"}[type(self.config)]
        body = {"method": method, **_jsonable(dataclasses.asdict(self.config))}
        if self.sensitivity is not None:
            body["sensitivity"] = _jsonable(dataclasses.asdict(self.sensitivity))
        return body


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def parse_stage(body: Any, *, prefix: str = "", source: str | None = None) -> PruneStage:
    """Validate a recipe's ``prune`` mapping.

    Args:
        body: the stage's mapping from YAML.
        prefix: where it sits in the file, e.g. ``stages[1].prune``.
        source: the recipe file, for the message.
    Returns:
        the PruneStage.
    Raises:
        ConfigError: naming the key, e.g. ``recipe.yaml: stages[1].prune.sparsity: must be in [0, 1), got 1.2``.
    """
    try:
        if not isinstance(body, Mapping):
            raise ConfigError("", f"must be a mapping such as {{method: magnitude, sparsity: 0.9}}, got {body!r}")
        body = dict(body)
        spec = value_object("sensitivity", SensitivitySpec, body.pop("sensitivity", None), optional=True)
        config = config_from_mapping(body, stage_keys=("sensitivity",) if body.get("method") != "activation" else ())
        if spec is not None and isinstance(config, ActivationConfig):
            raise ConfigError("sensitivity", "applies to the methods magnitude and structured, not activation")
        return PruneStage(config, spec)
    except ConfigError as exc:
        raise exc.within(prefix, source) from None


def _calibration(ctx: "RunContext", batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``batches`` batches of 64 of the train split, in its stored order: (x (64, *input), y (64,))."""
    loader = DataLoader(ctx.splits.train, batch_size=CALIBRATION_BATCH, shuffle=False)
    out = []
    for x, y in loader:
        if len(out) == batches:
            break
        out.append((x, y))
    return out


def _dry_run_config(config):
    """The config as one shot without fine-tuning: the final step removes the most, so it shows what cannot be."""
    changes: dict[str, Any] = {"finetune": None}
    if hasattr(config, "schedule"):
        changes["schedule"] = Schedule()
    if isinstance(config, StructuredConfig):
        # how many units go depends on neither the importance nor the refit after the cut
        changes.update(importance="l2", reconstruct=False)
    if isinstance(config, MagnitudeConfig) and config.scope == "global":
        # which layers a global threshold empties depends on the trained weights (initial scales differ per
        # layer); only the overridden layers, pruned on their own, can be checked now
        changes.update(sparsity=0.0, scope="layer")
    return dataclasses.replace(config, **changes)


def check_stage(ctx: "RunContext", stage: PruneStage) -> None:
    """Before anything trains: ``ignore`` and ``overrides`` name modules of the model, and no sparsity would
    remove or zero a whole layer (a dry run on a copy of the untrained model).

    For ``scope: global`` magnitude pruning, which weights go depends on the trained values, so a layer that a
    global threshold empties is reported when the stage runs.
    """
    config = stage.config
    probe = copy.deepcopy(ctx.model).cpu()
    if isinstance(config, MagnitudeConfig):
        project_attention_(probe)  # names as the stage will see them: attention's in-projection is a layer
    check_names(probe, config.ignore, getattr(config, "overrides", {}))
    if isinstance(config, ActivationConfig):
        return  # which units fall below the threshold depends on the trained model
    example = ctx.splits.train.tensors[0][:2]  # (2, *input_shape)
    prune_(probe, _dry_run_config(config), example_inputs=example)


def _finetune_fn(ctx: "RunContext", config):
    """``finetune(model, epochs, after_step, step, steps)`` for prune_: the run's training loop, one checkpoint
    per schedule step."""
    from torchslim.train import TrainConfig

    ft = config.finetune
    if ft is None:
        return None

    def finetune(model: nn.Module, epochs: int, after_step, step: int, steps: int, loss_fn=None) -> None:
        train = TrainConfig(epochs=epochs, lr=ft.lr, batch_size=ft.batch_size, augment=ft.augment)
        extra = {} if loss_fn is None else {"loss_fn": loss_fn}  # finetune.distill: the unpruned model teaches
        try:
            ctx.fit(model, train, desc=f"prune finetune {step} of {steps}", after_step=after_step, **extra)
        except ConfigError as exc:  # e.g. the loss diverged: name the fine-tune's lr
            raise exc.within("finetune") from None

    return finetune


def _with_sensitivity(ctx: "RunContext", stage: PruneStage, calibration) -> tuple[Any, dict[str, Any]]:
    """The config with per-layer overrides from the sensitivity table, and the record entries describing it."""
    config, spec = stage.config, stage.sensitivity
    device = module_device(ctx.model)
    table: SensitivityTable = sensitivity(ctx.model, config, spec.sparsities, ctx.validate,
                                          calibration=calibration, example_inputs=calibration[0][0].to(device))
    chosen = overrides_from_sensitivity(table, spec.max_drop)
    explicit = LayerSelector(ctx.model, config.sparsity, config.ignore, config.overrides)
    derived = {n: s for n, s in chosen.items() if explicit.override_for(n) is None}
    record = {
        "sensitivity_baseline": table.baseline,
        "sensitivity": [{"layer": n, "sparsity": s, "val_metric": None if math.isnan(m) else m}
                        for n, s, m in table.rows],
        "sensitivity_overrides": [f"{n} {s:g}" for n, s in derived.items()],
    }
    return dataclasses.replace(config, overrides={**config.overrides, **derived}), record


def _layer_summary(report: PruneReport, model: nn.Module) -> dict[str, list[str]]:
    """Per layer, compactly: units removed of those there were (structured), or the layer's sparsity."""
    if report.method == "magnitude":
        return {"layer_sparsity": [f"{l.name} {1 - l.nonzero_after / l.weights_before:.4f}" for l in report.layers]}
    modules = dict(model.named_modules())
    return {"removed_units": [f"{l.name} {len(l.removed)}/{len(l.removed) + _outputs(modules[l.name])}"
                              for l in report.layers if l.removed]}


def _units_removed(report: PruneReport, model: nn.Module) -> str:
    """``0.5 of units removed`` or ``0.19-0.62 of units removed per layer``: what the stage did, which per-layer
    caps (sensitivity, overrides) keep apart from the asked ``sparsity``."""
    modules = dict(model.named_modules())
    shares = [len(l.removed) / (len(l.removed) + _outputs(modules[l.name])) for l in report.layers
              if l.removed and l.name in modules]
    if not shares:
        return "no unit removed"
    low, high = min(shares), max(shares)
    return f"{low:.2g} of units removed" if high - low < 0.01 else f"{low:.2g}-{high:.2g} of units removed per layer"


def _keep_masked(ctx: "RunContext", masks: dict[str, torch.Tensor]) -> None:
    """Keep the pruned weights at zero after every later optimizer step of the run, on whatever model it holds
    then (one reloaded on resume; layers a later stage replaced are skipped)."""
    ctx.step_hooks.append(mask_hook(lambda: ctx.model, masks, log=ctx.log))


def resume_stage(ctx: "RunContext", stage: PruneStage, record: dict[str, Any]) -> None:
    """A finished magnitude stage's masks are its zeros: rebuild them so later training keeps them."""
    modules = dict(ctx.model.named_modules())
    masks = {name: masked_weight(modules[name]).detach() != 0 for name in record.get("masked_layers", [])
             if is_recurrent(modules.get(name))
             or isinstance(getattr(modules.get(name), "weight", None), torch.Tensor)}
    if masks:
        _keep_masked(ctx, masks)


def run_stage(ctx: "RunContext", stage: PruneStage) -> dict[str, Any]:
    """Prune ``ctx.model`` in place (fine-tuning as configured) and describe the result.

    Returns:
        the record: method, achieved sparsity, params and non-zeros before/after, per-layer summary, the
        validation metric after, and (magnitude) the names of the masked layers.
    """
    config = stage.config
    batches = getattr(config, "calibration", None)
    calibration = _calibration(ctx, batches.batches if batches is not None else 1)
    record: dict[str, Any] = {}
    if isinstance(config, MagnitudeConfig):
        project_attention_(ctx.model)  # before sensitivity and overrides name its in-projection
    try:
        if stage.sensitivity is not None:
            config, extra = _with_sensitivity(ctx, stage, calibration)
            record.update(extra)
        report = prune_(ctx.model, config, calibration=calibration, finetune=_finetune_fn(ctx, config))
    except ConfigError as exc:
        raise exc.within(f"stages[{ctx.stage_index}].prune", ctx.recipe.source) from None
    if report.masks:
        _keep_masked(ctx, report.masks)
    out = {"method": report.method, "sparsity": report.sparsity,
           "params_before": report.params_before, "params_after": report.params_after,
           "nonzero_before": report.nonzero_before, "nonzero_after": report.nonzero_after,
           **_layer_summary(report, ctx.model), "val_metric": ctx.validate(ctx.model), **record}
    if report.masks:
        out["masked_layers"] = sorted(report.masks)  # what a resumed run keeps at zero
    if is_distributed() and report.masks:  # a collective: every rank calls it
        out["mask_digests"] = rank_digests(report.masks)  # equal entries: the ranks' masks agree
        if len(set(out["mask_digests"])) > 1:
            ctx.log("prune: WARNING the replicas' masks differ")
    refit = f", refit {', '.join(report.refit) or 'none'}" if getattr(config, "reconstruct", False) else ""
    # structured: the stage's sparsity is a share of units (a cap per layer where sensitivity or overrides set
    # it); removing a unit also removes its consumers' inputs
    units = f"{_units_removed(report, ctx.model)}, " if report.method == "structured" else ""
    ctx.log(f"prune: {report.method}, {units}{report.sparsity:.4f} of {len(report.layers)} layer(s)' weights "
            f"gone, params {report.params_before} -> {report.params_after}{refit}, val {out['val_metric']:.4f}")
    for line in by_reason("prune: not pruned", report.unpruned) + [f"prune: {note}" for note in report.notes]:
        ctx.log(line)
    if report.unpruned:
        out["unpruned"] = report.unpruned
    return out


register_stage(StageHandler("prune", PruneStage, run_stage, compresses=True, check=check_stage,
                            parser=parse_stage, resume=resume_stage))
