"""Runs a recipe: checks everything first, runs the stages in order, then saves, reloads and measures.

Every reported number of the compressed model is measured on the artifact as reloaded from disk.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim._parametrized import bake_parametrizations_
from torchslim.artifact import (artifact_bytes, artifact_digest, artifact_size, fresh_dir, load_artifact, publish,
                                read_manifest, save_artifact, sign_artifact, update_manifest, write_bytes_atomic)
from torchslim.data import Splits, load_splits
from torchslim.data._sources import unnamed_labels
from torchslim.distributed import is_distributed, is_main, local_device, rank_digests
from torchslim.domain import Domain
from torchslim.evaluate import check_constraints, check_metric_fits, count_params, measure, size_bytes
from torchslim.models import build_model, check_fits, data_kwargs_asked, input_shape_of, with_data_kwargs
from torchslim.recipe import Recipe
from torchslim.stages import STAGES
from torchslim.train import FitResult, TrainConfig, fit

WORK_DIR = ".torchslim-work"
# What a run publishes into its output folder, together: metrics.json (last) says the others belong to it.
OUTPUTS = ("artifact", "model.onnx", "report.md", "report.html", "metrics.json")
METRICS = "metrics.json"


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def architecture_of(spec: Any) -> dict[str, Any]:
    """The manifest's description of how to rebuild a model spec (no weights path: the artifact holds them)."""
    arch = {"name": spec.name} if spec.name is not None else {"factory": spec.factory}
    arch["kwargs"] = dict(spec.kwargs)
    return arch


@dataclass
class RunContext:
    """What stages read and change: the current model, the data, and where checkpoints go."""

    recipe: Recipe
    domain: Domain
    splits: Splits
    model: nn.Module
    architecture: dict[str, Any]
    device: torch.device
    work_dir: Optional[Path] = None
    resume: bool = False
    stage_index: int = 0
    baseline: Optional[nn.Module] = None
    baseline_architecture: Optional[dict[str, Any]] = None
    records: list[dict[str, Any]] = field(default_factory=list)
    # Called after every optimizer step of every later training run (e.g. pruning masks stay zero).
    step_hooks: list[Callable[[], None]] = field(default_factory=list)
    log: Callable[[str], None] = _log_stderr
    template: Optional[nn.Module] = None  # a model given in memory, as it was given: what reloads start from

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def metric(self) -> str:
        return self.domain.metric

    def fit(self, model: nn.Module, cfg: TrainConfig, *, desc: str,
            after_step: Optional[Callable[[], None]] = None, **kwargs: Any) -> FitResult:
        """The training loop with this run's seed, metric, device, step hooks and per-stage checkpoint."""
        checkpoint = None
        if self.work_dir is not None:
            checkpoint = self.work_dir / f"stage{self.stage_index}-{desc.replace(' ', '_')}.safetensors"
        hooks = [*self.step_hooks, *([after_step] if after_step is not None else [])]

        def run_hooks() -> None:
            for hook in hooks:
                hook()

        return fit(model, self.splits.train, self.splits.val, cfg, seed=self.seed + self.stage_index,
                   metric=self.metric, checkpoint=checkpoint, resume=self.resume, desc=desc,
                   device=self.device, after_step=run_hooks if hooks else None, **kwargs)

    def reload(self, path: Path) -> tuple[nn.Module, dict[str, Any]]:
        """A model this run saved, loaded back. Its factory (if any) is the one the user's domain names, so it
        is imported from the domain's folder without asking again; a model given in memory is rebuilt from a
        copy of it as it was given."""
        if self.template is not None and "module" in (read_manifest(path).get("architecture") or {}):
            return load_artifact(path, model=copy.deepcopy(self.template))
        return load_artifact(path, trust_code=True, code_dir=self.domain.base_dir)

    def validate(self, model: Optional[nn.Module] = None) -> float:
        """The metric on the validation split (decisions never look at the test split), on the run's device: the
        model moves there first (a model given in memory or loaded from weights starts on the CPU, and no train
        stage may have moved it)."""
        from torchslim.evaluate import compute_metric

        model = (model if model is not None else self.model).to(self.device)
        return compute_metric(model, self.splits.val, self.metric, device=self.device)


def prepare(recipe: Recipe, *, log: Callable[[str], None] = _log_stderr, model: Optional[nn.Module] = None,
            splits: Optional[Splits] = None) -> RunContext:
    """Everything that can be checked without training: data, model, shape fit, each stage's names and ranges.

    Args:
        model, splits: a model and data already in memory (``torchslim.compress``), used instead of building
            what the domain names; the model is recorded by its class name and rebuilt from a copy of itself.
    """
    domain = recipe.domain
    seed_everything(recipe.seed)
    template = None
    try:
        if model is None:
            model, architecture, splits = _model_and_data(domain, splits)
        else:
            template = copy.deepcopy(model).cpu().eval()
            architecture = {"module": f"{type(model).__module__}.{type(model).__qualname__}"}
        if splits is None:
            splits = load_splits(domain.data, base_dir=domain.base_dir, input_shape=input_shape_of(model))
        warnings = check_fits(model, splits.train.tensors[0][:2], splits.num_classes)
        check_metric_fits(domain.metric, splits.num_classes)
        if domain.runtime == "onnxruntime":
            from torchslim.export.onnx_export import check_exportable

            check_exportable(model, "runtime", "onnxruntime runs the model's ONNX export", "use runtime: torch")
    except ConfigError as exc:
        raise exc.within(source=domain.source) from None
    where = f"{domain.source}: " if domain.source else ""
    for warning in [*_label_warnings(splits), *_scale_warnings(splits), *warnings]:
        log(f"warning: {where}{warning}")
    ctx = RunContext(recipe, domain, splits, model, architecture, local_device(), log=log, template=template)
    # Checks see a copy of the context: a stage that will replace the model (a distilled student) puts the model
    # later stages will see into it, so their names are checked against the right network.
    checking = dataclasses.replace(ctx, records=[], step_hooks=[])
    for stage in recipe.stages:
        handler = STAGES[stage.name]
        if handler.check is not None:
            try:
                handler.check(checking, stage.config)
            except ConfigError as exc:
                raise exc.within(f"stages[{stage.index}].{stage.name}", recipe.source) from None
    return ctx


def _label_warnings(splits: Splits) -> list[str]:
    """Class numbers no sample has: the model gets an output for each, which nothing trains to be right."""
    present = set(torch.cat([split.tensors[1] for split in (splits.train, splits.val, splits.test)]).tolist())
    missing = [c for c in range(splits.num_classes) if c not in present]
    if not missing:
        return []
    return [f"data.source: no sample has any of the labels {_few(missing)}; classes are numbered 0 to "
            f"{splits.num_classes - 1}, so the model gets {splits.num_classes} outputs and no sample trains "
            f"{len(missing)} of them"]


# A feature whose spread is this many times the median feature's dominates the first layer's products and its
# gradients: an MLP on scikit-learn's breast-cancer features as stored (areas ~10^2-10^3 beside ratios ~10^-2)
# reached 86.0 % test accuracy, 95.8 % on the same features standardised.
SCALE_RATIO = 100.0


def _scale_warnings(splits: Splits) -> list[str]:
    """Input features on very different scales (raw tabular columns): training works best near unit scale, and the
    data is used as it is, so say which feature and how to fix it. Integer ids (tokens, categories) are exempt."""
    if "integers as float32" in str(splits.info.get("preprocessing", "")):
        return []
    x = splits.train.tensors[0].flatten(1)
    x = x[:min(4096, max(64, 2 ** 24 // max(1, x.shape[1])))]  # the (shuffled) split's first rows: 64 MB at most
    spread = x.std(0) if len(x) > 1 else torch.zeros(x.shape[1], dtype=x.dtype)
    varying = torch.nonzero(spread > 0).flatten()
    if len(varying) < 2:
        return []
    spreads = spread[varying]
    median, widest = spreads.median().item(), spreads.argmax().item()
    if spreads[widest].item() < SCALE_RATIO * median:
        return []
    return [f"data.source: input features differ in scale: feature {varying[widest].item()}'s standard deviation on "
            f"the training split is {spreads[widest].item():.4g}, the median feature's {median:.4g}; the data is used "
            f"as it is, so standardise the features first (or in the model's forward) for training to work on all of "
            f"them"]


def _given_input_shape(kwargs: dict[str, Any]) -> tuple[int, ...] | None:
    """``input_shape`` as a model's kwargs give it (the model itself may not keep it), or None."""
    shape = kwargs.get("input_shape")
    if isinstance(shape, (list, tuple)) and shape and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                          for d in shape):
        return tuple(shape)
    return None


def _model_and_data(domain: Domain, splits: Optional[Splits]) -> tuple[nn.Module, dict[str, Any], Splits]:
    """The domain's model, its manifest architecture and the data. A model that declares its input shape is
    built first (images are resized to it); one whose constructor asks for ``input_shape`` is built after the
    data, from it, and ``num_classes`` is filled in from the data wherever the constructor takes it."""
    spec = domain.model
    asked = data_kwargs_asked(spec, domain.base_dir)
    if "input_shape" in asked:
        splits = splits or load_splits(domain.data, base_dir=domain.base_dir)
        spec = with_data_kwargs(spec, domain.base_dir, splits.input_shape, splits.num_classes)
        return build_model(spec, domain.base_dir), architecture_of(spec), splits
    # A probe for its declared input shape, before the data is read: no weights, and a placeholder class count
    # where the constructor requires one (the real build, from the data, draws the initialisation).
    placeholder = {"num_classes": 2} if "num_classes" in data_kwargs_asked(spec, domain.base_dir, required=True) else {}
    probe = spec.model_copy(update={"weights": None, "kwargs": {**spec.kwargs, **placeholder}})
    with torch.random.fork_rng(devices=[]):
        declared = input_shape_of(build_model(probe, domain.base_dir)) or _given_input_shape(spec.kwargs)
    splits = splits or load_splits(domain.data, base_dir=domain.base_dir, input_shape=declared)
    spec = with_data_kwargs(spec, domain.base_dir, splits.input_shape, splits.num_classes)
    return build_model(spec, domain.base_dir), architecture_of(spec), splits


def _measure_stage(ctx: RunContext, current: Path, baseline: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Size, parameters and validation metric of the model as saved after a stage, reloaded from disk.

    Returns:
        ``size_bytes``, ``size_bytes_no_entropy`` (the same tensors without entropy coding),
        ``compression_ratio`` (the uncompressed fp32 baseline file's bytes / these bytes), ``params``,
        ``nonzero_params`` and ``artifact_val_metric``, for the report's per-stage table.
    """
    model, _ = ctx.reload(current)
    params, nonzero = count_params(model)
    size = size_bytes(current)
    plain = artifact_bytes(ctx.model, architecture=ctx.architecture, extra=extra, entropy=False)
    return {"size_bytes": size, "size_bytes_no_entropy": plain, "compression_ratio": size_bytes(baseline) / size,
            "params": params, "nonzero_params": nonzero, "artifact_val_metric": ctx.validate(model)}


def _save_progress(ctx: RunContext, completed: int) -> None:
    """After each stage: the model and the records, so ``--resume`` skips finished stages.

    From the first compressing stage on, the stage's record also gets the saved model's size and metrics
    (see :func:`_measure_stage`); both models are saved as the final artifact is (same manifest keys).
    """
    if ctx.work_dir is None or not is_main():
        return
    extra = _manifest_extra(ctx)
    current = save_artifact(ctx.model, ctx.work_dir / "current", architecture=ctx.architecture, extra=extra)
    baseline = ctx.work_dir / "baseline"
    if ctx.baseline is not None and not baseline.exists():
        save_artifact(ctx.baseline, baseline, architecture=ctx.baseline_architecture, extra=extra, compress=False)
    if ctx.baseline is not None and ctx.records and STAGES[ctx.records[-1]["stage"]].changes_model:
        ctx.records[-1].update(_measure_stage(ctx, current, baseline, extra))
    write_bytes_atomic(ctx.work_dir / "progress.json", json.dumps(
        {"completed": completed, "records": ctx.records, "architecture": ctx.architecture}).encode())


def _restore_progress(ctx: RunContext) -> int:
    """The number of stages already finished in an interrupted run, with the model and baseline restored."""
    progress = ctx.work_dir / "progress.json"
    if not progress.is_file():
        if any(ctx.work_dir.glob("stage*.safetensors")):
            ctx.log("resume: no stage had finished; the first continues from its last epoch's checkpoint")
        else:  # e.g. a script that always passes --resume: say that this is a fresh start
            ctx.log(f"resume: {ctx.work_dir.parent} holds no interrupted run; starting from the first stage")
        return 0
    state = json.loads(progress.read_text())
    ctx.model, _ = ctx.reload(ctx.work_dir / "current")
    ctx.architecture, ctx.records = state["architecture"], state["records"]
    if (ctx.work_dir / "baseline").exists():
        ctx.baseline, manifest = ctx.reload(ctx.work_dir / "baseline")
        ctx.baseline_architecture = manifest["architecture"]
    for stage, record in zip(ctx.recipe.stages[:state["completed"]], ctx.records):
        handler = STAGES[stage.name]
        if handler.resume is not None:
            handler.resume(ctx, stage.config, record)
    ctx.log(f"resume: {state['completed']} stage(s) already done")
    return int(state["completed"])


def run_recipe(recipe: Recipe, out: str | Path, *, resume: bool = False, sign_key: str | Path | None = None,
               threads: int | None = None, log: Callable[[str], None] = _log_stderr,
               model: Optional[nn.Module] = None, splits: Optional[Splits] = None,
               after_stage: Optional[Callable[[RunContext, dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Run every stage of ``recipe`` and write ``out/metrics.json``, ``out/report.md``, ``out/report.html`` and
    ``out/artifact`` (signed with the EC private key ``sign_key`` when given, before it is published).

    Args:
        threads: CPU threads for training and measuring (None: torch's current setting); restored afterwards.
        model, splits: a model and data in memory instead of the domain's (see :func:`prepare`).
        after_stage: called with the context and the stage's record after each stage is checkpointed; an
            exception it raises stops the run there (a search stops a hopeless candidate this way).
    Returns:
        the metrics that were written to ``metrics.json``.
    """
    if recipe.domain.task == "sentence-embedding":
        if resume or model is not None or splits is not None or after_stage is not None:
            raise ConfigError("--resume" if resume else "model", "a sentence-embedding recipe runs from its domain's "
                                                                 "model and corpus, from the start")
        from torchslim.text.run import run_text_recipe

        return run_text_recipe(recipe, out, sign_key=sign_key, threads=threads, log=log)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_recipe(recipe, Path(out), resume=resume, sign_key=sign_key, log=log, model=model, splits=splits,
                           after_stage=after_stage)
    finally:
        torch.set_num_threads(before)


def _run_recipe(recipe: Recipe, out: Path, *, resume: bool, sign_key: str | Path | None,
                log: Callable[[str], None], model: Optional[nn.Module], splits: Optional[Splits],
                after_stage: Optional[Callable[[RunContext, dict[str, Any]], None]] = None) -> dict[str, Any]:
    if not is_main():  # under torchrun only rank 0 speaks
        log = lambda _message: None  # noqa: E731
    ctx = prepare(recipe, log=log, model=model, splits=splits)
    if not resume and (out / METRICS).exists():
        log(f"note: {out} holds an earlier run; this run's outputs replace it when they are published")
    ctx.work_dir, ctx.resume = out / WORK_DIR, resume
    created = not out.exists()
    if is_main():
        if not resume:
            shutil.rmtree(ctx.work_dir, ignore_errors=True)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run_stages(ctx, recipe, out, sign_key, after_stage)
    except ConfigError:
        # Bad input found while running (a training that diverges): nothing of this run stays behind; an
        # interrupted run (any other exception, or a kill) keeps its checkpoints for --resume.
        if is_main():
            shutil.rmtree(ctx.work_dir, ignore_errors=True)
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise


def _run_stage(ctx: RunContext, stage: Any) -> None:
    """One stage of the run: its handler, its record, and the checkpoint a resumed run starts after."""
    handler = STAGES[stage.name]
    ctx.stage_index = stage.index
    if handler.compresses and ctx.baseline is None:
        # the same function with plain weights, for the baseline too: torch cannot copy the weight of a trained
        # layer under the older, hook-based weight_norm
        bake_parametrizations_(ctx.model)
        ctx.baseline, ctx.baseline_architecture = copy.deepcopy(ctx.model).cpu(), dict(ctx.architecture)
    seed_everything(ctx.recipe.seed + stage.index)
    ctx.log(f"stage {stage.index}: {stage.name}")
    record = handler.run(ctx, stage.config)
    if is_distributed():  # a collective: every rank's state digest; equal entries = the replicas agree
        record["rank_digests"] = rank_digests(ctx.model)
        if len(set(record["rank_digests"])) > 1:
            ctx.log(f"stage {stage.index}: WARNING the replicas' weights differ: {record['rank_digests']}")
    ctx.records.append({"stage": stage.name, "index": stage.index, **record})
    _save_progress(ctx, stage.index + 1)


def _run_stages(ctx: RunContext, recipe: Recipe, out: Path, sign_key: str | Path | None,
                after_stage: Optional[Callable[[RunContext, dict[str, Any]], None]] = None) -> dict[str, Any]:
    done = _restore_progress(ctx) if ctx.resume else 0
    for stage in recipe.stages[done:]:
        _run_stage(ctx, stage)
        if after_stage is not None:
            after_stage(ctx, ctx.records[-1])

    metrics = finish(ctx, out, sign_key=sign_key) if is_main() else {}
    if is_main():
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
    return metrics


def work_folder(out: str | Path) -> Path:
    """Where a run into ``out`` keeps its checkpoints: what ``run_recipe(..., resume=True)`` continues from."""
    return Path(out) / WORK_DIR


def checkpoint_stages(recipe: Recipe, folder: str | Path, count: int, *, start: str | Path | None = None,
                      threads: int | None = None) -> None:
    """Run the first ``count`` stages of ``recipe`` and leave in ``folder`` (a new folder) the checkpoint a run
    keeps after them: a copy of it as :func:`work_folder` of a run's output folder makes
    ``run_recipe(recipe, out, resume=True)`` continue after those stages, exactly as a run from the start would.
    A search runs the stages its candidates share once this way.

    Args:
        start: a checkpoint of this recipe's first stages (made the same way) to continue from instead of the
            start; it is copied, not changed.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        ctx = prepare(recipe, log=lambda _m: None)
        ctx.work_dir = Path(folder)
        if start is not None:
            shutil.copytree(start, ctx.work_dir)
            ctx.resume = True
        ctx.work_dir.mkdir(parents=True, exist_ok=start is not None)
        done = _restore_progress(ctx) if start is not None else 0
        for stage in recipe.stages[done:count]:
            _run_stage(ctx, stage)
    finally:
        torch.set_num_threads(before)


def _manifest_extra(ctx: RunContext) -> dict[str, Any]:
    return {"input_shape": list(ctx.splits.input_shape), "labels": ctx.splits.labels,
            "preprocessing": ctx.splits.info["preprocessing"], "data": ctx.splits.info,
            "domain": ctx.domain.to_dict(), "recipe": _portable_recipe(ctx.recipe), "seed": ctx.seed}


def _portable_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe with stage configs resolved (defaults filled in); the domain is recorded on its own."""
    stages = [{s.name: s.config.model_dump(mode="json")} for s in recipe.stages]
    return {"seed": recipe.seed, "stages": stages}


def summarize(measured: dict[str, Any], base: dict[str, Any], *, size: int, baseline_size: int,
              domain: Domain, seed: int, timing: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` object (its keys are a public contract) from two measurements timed side by side
    (``timing``: :func:`torchslim.evaluate.side_by_side_latency`'s spread and machine load, as ``_side_by_side``
    returns them)."""
    from torchslim.evaluate import speedup

    metrics: dict[str, Any] = {
        "metric": domain.metric, "value": measured["value"], "baseline_value": base["value"],
        "size_bytes": size, "baseline_size_bytes": baseline_size, "compression_ratio": baseline_size / size,
        "params": measured["params"], "nonzero_params": measured["nonzero_params"],
        "baseline_params": base["params"],
        "latency_ms": measured["latency_ms"], "baseline_latency_ms": base["latency_ms"],
        **timing,
        **({"baseline_runtime_latency_ms": base["runtime_latency_ms"]} if "runtime_latency_ms" in base else {}),
        "threads": measured["threads"], "runtime": domain.runtime, "seed": seed,
        "peak_memory_bytes": measured["peak_memory_bytes"],
        "baseline_peak_memory_bytes": base["peak_memory_bytes"],
    }
    # baseline / compressed at batch 64, timed side by side in this run with the same thread count
    metrics["latency_ratio_batch_64"] = speedup(metrics, "batch_64")
    metrics["constraints"] = check_constraints(domain.constraints, metrics)
    return metrics


def finish(ctx: RunContext, out: Path, *, sign_key: str | Path | None = None) -> dict[str, Any]:
    """Save the artifact, reload it, measure it and the baseline side by side, and publish the outputs.

    The compressed model is measured in the domain's runtime (``onnxruntime``: through an ORT session over the
    artifact's int8 model, or an fp32 export); the baseline in torch. An ``export`` stage's extra formats are
    written from the reloaded artifact (``onnx`` → ``out/model.onnx``). Everything is written into a staging
    folder first and published together (see :func:`torchslim.artifact.publish`): ``metrics.json``, which
    carries the artifact's digest, is the last to arrive and the first to go.
    """
    staging = fresh_dir(out / "publish")
    try:
        metrics, names = _write_outputs(ctx, staging)
        if sign_key is not None:
            sign_artifact(staging / "artifact", sign_key)
        publish(staging, out, names, commit=METRICS, outputs=OUTPUTS)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metrics


def _write_outputs(ctx: RunContext, staging: Path) -> tuple[dict[str, Any], list[str]]:
    """Write the run's outputs into ``staging``; returns (metrics, the names written)."""
    from torchslim.export.artifact import module_onnx
    from torchslim.export.measure import measure_in_runtime
    from torchslim.export.stage import ONNX_FILE, requested_formats

    model = ctx.model.cpu().eval()
    baseline = ctx.baseline.cpu().eval() if ctx.baseline is not None else copy.deepcopy(model)
    baseline_arch = ctx.baseline_architecture or ctx.architecture
    metric, test, shape = ctx.metric, ctx.splits.test, ctx.splits.input_shape
    extra = _manifest_extra(ctx)

    artifact = save_artifact(model, staging / "artifact", architecture=ctx.architecture, extra=extra)
    reloaded, manifest = ctx.reload(artifact)
    # latency only from the side-by-side timing below
    measured = measure_in_runtime(reloaded, manifest, test, metric, shape, ctx.domain.runtime, latency=False)
    base_measured = measure(baseline, test, metric, shape, latency=False)
    timing = _side_by_side(reloaded, manifest, baseline, measured, base_measured, shape, ctx.domain.runtime)
    # The baseline is the uncompressed fp32 file (dense tensors, same manifest keys), as compression ratios are
    # quoted against it.
    baseline_bytes = artifact_bytes(baseline, architecture=baseline_arch, compress=False,
                                    extra={**extra, "metrics": {"metric": metric, "value": base_measured["value"]}})
    recorded = {"metrics": {"metric": metric, "value": measured["value"]},
                "baseline": {"architecture": baseline_arch, "value": base_measured["value"],
                             "size_bytes": baseline_bytes, "params": base_measured["params"]}}
    update_manifest(artifact, **recorded)
    names = ["artifact"]
    if "onnx" in requested_formats(ctx.records):
        data, _ = module_onnx(reloaded, manifest)
        write_bytes_atomic(staging / ONNX_FILE, data)
        names.append(ONNX_FILE)
    metrics = summarize(measured, base_measured, size=artifact_size(artifact), baseline_size=baseline_bytes,
                        domain=ctx.domain, seed=ctx.seed, timing=timing)
    metrics["size_bytes_no_entropy"] = artifact_bytes(model, architecture=ctx.architecture, extra={**extra, **recorded},
                                                      entropy=False)
    metrics.update({**_runtime_facts(measured),
                    "device": str(ctx.device), "data": ctx.splits.info, "stages": ctx.records,
                    "artifact_sha256": artifact_digest(artifact)})
    metrics.update(_validation_figures(ctx, reloaded, manifest, baseline, metrics))
    from torchslim.report import layer_stats, render_html, render_markdown

    metrics["layers"] = layer_stats(reloaded, manifest)
    write_bytes_atomic(staging / "report.md", render_markdown(metrics, ctx.domain.name).encode())
    write_bytes_atomic(staging / "report.html", render_html(metrics, ctx.domain.name).encode())
    write_bytes_atomic(staging / METRICS, (json.dumps(metrics, indent=2) + "\n").encode())
    return metrics, [*names, "report.md", "report.html", METRICS]


def _runtime_facts(measured: dict[str, Any]) -> dict[str, Any]:
    """What ``measure_in_runtime`` found about the runtime: its int8 kernels, the float ops between them, the CPU."""
    keys = ("int8_kernels", "float_ops_in_int8", "cpu_features")
    return {k: measured[k] for k in keys if k in measured}


def _side_by_side(model: nn.Module, manifest: dict[str, Any], baseline: nn.Module, measured: dict[str, Any],
                  base: dict[str, Any], shape: tuple[int, ...], runtime: str) -> dict[str, Any]:
    """Latency of both models timed in alternating rounds (see :func:`evaluate.side_by_side_latency`): the medians
    become each one's ``latency_ms``; the spread and the machine's load are returned for ``metrics.json``
    (``latency_spread``, ``others_running``, ``cores``, ``ort_threads``). In ONNX Runtime the baseline's fp32 export
    is timed in the same rounds (``base["runtime_latency_ms"]``): what the runtime alone gives of the speed-up over
    torch; each session on the thread count it runs fastest on.
    Timed while other processes took the cores, it is timed again (:func:`evaluate.timed_when_idle`)."""
    from torchslim.evaluate import side_by_side_latency, timed_when_idle
    from torchslim.export.measure import runtime_baseline, runtime_predict

    predict = runtime_predict(model, manifest, runtime, fastest=True)
    reference = runtime_baseline(baseline, shape) if runtime == "onnxruntime" else None
    timed = timed_when_idle(lambda: side_by_side_latency(baseline, predict, shape, runtime_baseline=reference))
    if runtime == "onnxruntime":  # the intra-op threads each ORT session chose (fastest_session)
        timed["ort_threads"] = {"compressed": predict.threads,
                                **({"baseline": reference.threads} if reference is not None else {})}
    measured["latency_ms"], base["latency_ms"] = timed["latency_ms"], timed["baseline_latency_ms"]
    if "runtime_baseline_latency_ms" in timed:
        base["runtime_latency_ms"] = timed["runtime_baseline_latency_ms"]
    return {key: timed[key] for key in ("latency_spread", "others_running", "cores", "ort_threads") if key in timed}


def _validation_figures(ctx: RunContext, reloaded: nn.Module, manifest: dict[str, Any], baseline: nn.Module,
                        metrics: dict[str, Any]) -> dict[str, Any]:
    """The metric of both models on the validation split, and the constraints judged with it: what a search
    decides on (the test split is only reported). The compressed model runs where it is measured."""
    from torchslim.evaluate import compute_metric

    model: Any = reloaded
    if ctx.domain.runtime == "onnxruntime":
        from torchslim._load import ort_session_of

        model = ort_session_of(reloaded, manifest, intra_op_threads=torch.get_num_threads())
    val = {"val_value": compute_metric(model, ctx.splits.val, ctx.metric),
           "baseline_val_value": compute_metric(baseline, ctx.splits.val, ctx.metric)}
    judged = {**metrics, "value": val["val_value"], "baseline_value": val["baseline_val_value"]}
    return {**val, "val_constraints": check_constraints(ctx.domain.constraints, judged)}


def metrics_mismatch(artifact: str | Path) -> str | None:
    """A one-line warning when the ``metrics.json`` beside ``artifact`` (its run folder's) describes another
    artifact, or None when it matches or there is none."""
    folder = Path(artifact)
    path = folder.parent / METRICS
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text()).get("artifact_sha256")
    except (OSError, ValueError, AttributeError):
        return f"{path} is unreadable: its figures cannot be matched to {folder}"
    actual = artifact_digest(folder)
    if recorded == actual:
        return None
    if recorded is None:
        return f"{path} records no artifact digest: its figures may describe another artifact than {folder}"
    return (f"{path} describes another artifact (sha256 {str(recorded)[:12]}…) than {folder} "
            f"(sha256 {actual[:12]}…): its figures are not this artifact's")


def evaluate_artifact(path: str | Path, domain: Domain, *, trust_code: bool = False,
                      code_dir: str | Path | None = None, verify_key: str | Path | None = None) -> dict[str, Any]:
    """Re-measure an artifact on a domain's test split.

    The baseline figures come from the artifact's own record; its latency and peak memory are re-measured on a
    freshly built dense model of the recorded baseline architecture (dense fp32 speed does not depend on the
    weight values). When the domain names trained baseline weights, the baseline is re-measured in full.
    The artifact itself is measured in the domain's runtime (see :func:`finish`).

    Args:
        trust_code, code_dir, verify_key: as for :func:`torchslim.artifact.load_artifact`; ``code_dir``
            defaults to the domain file's folder. A recorded baseline built by a factory needs ``trust_code``
            too.
    """
    from torchslim._validation import parse
    from torchslim.artifact._trust import require_code_consent
    from torchslim.domain import ModelSpec
    from torchslim.export.measure import measure_in_runtime
    from torchslim._load import open_verified
    from torchslim.text.artifact import is_text_manifest

    opened = open_verified(path, verify_key)
    if is_text_manifest(opened[0]) != (domain.task == "sentence-embedding"):
        kind = "a sentence-embedding model" if is_text_manifest(opened[0]) else "a classifier"
        raise ConfigError("task", f"{path} holds {kind}, which the domain's task {domain.task!r} does not measure",
                          domain.source)
    if domain.task == "sentence-embedding":
        from torchslim.text.run import evaluate_text_artifact

        return evaluate_text_artifact(path, domain)
    code_dir = domain.base_dir if code_dir is None else code_dir
    model, manifest = load_artifact(path, trust_code=trust_code, code_dir=code_dir, opened=opened)
    try:
        declared = input_shape_of(model) or _given_input_shape(manifest["architecture"].get("kwargs", {}))
        splits = load_splits(domain.data, base_dir=domain.base_dir, input_shape=declared)
        check_fits(model, splits.test.tensors[0][:2], splits.num_classes)
        check_metric_fits(domain.metric, splits.num_classes)
    except ConfigError as exc:
        raise exc.within(source=domain.source) from None
    recorded, given = manifest.get("labels"), list(splits.labels)
    if isinstance(recorded, list) and recorded and _other_classes(recorded, given):
        raise ConfigError("data", f"the artifact's classes are {_few(recorded)}, this domain's data has "
                                  f"{_few(given)}: it was trained on other data", domain.source)
    shape = splits.input_shape
    measured = measure_in_runtime(model, manifest, splits.test, domain.metric, shape, domain.runtime, latency=False)
    # Latency and memory of the baseline do not depend on weight values: a fresh dense model of the recorded
    # architecture measures them. Its metric, params and bytes are the artifact's record, unless the domain
    # names trained baseline weights, whose metric is then re-measured.
    record = manifest.get("baseline")
    trained = domain.model.weights is not None or not isinstance(record, dict)
    sized = with_data_kwargs(domain.model, domain.base_dir, splits.input_shape, splits.num_classes)
    if trained:
        baseline = build_model(sized, domain.base_dir)
    else:
        arch = record.get("architecture") or {}
        require_code_consent(Path(path), arch, trust_code)
        spec = parse(ModelSpec, {k: arch[k] for k in ("name", "factory", "kwargs") if k in arch},
                     prefix="baseline.architecture", source=str(path))
        baseline = build_model(spec, code_dir)
    base = measure(baseline, splits.test, domain.metric, shape, latency=False)  # timed side by side next
    timing = _side_by_side(model, manifest, baseline, measured, base, shape, domain.runtime)
    if not trained:
        base["value"], base["params"] = record["value"], record["params"]
    if record is not None:
        baseline_bytes = record["size_bytes"]
    else:
        baseline_bytes = artifact_bytes(baseline, architecture=architecture_of(sized), compress=False)
    metrics = summarize(measured, base, size=artifact_size(path), baseline_size=baseline_bytes, domain=domain,
                        seed=manifest.get("seed", 0), timing=timing)
    metrics.update({**_runtime_facts(measured),
                    "recorded_value": manifest.get("metrics", {}).get("value"),
                    "artifact_sha256": artifact_digest(path),
                    "quantize_methods": _quantize_methods(manifest.get("recipe"))})
    return metrics


def _other_classes(recorded: list[Any], given: list[str]) -> bool:
    """Whether data with classes ``given`` are not those an artifact recorded: by name where both name them, else
    by number (data in memory and npz files number their classes only)."""
    numbered = recorded == unnamed_labels(len(recorded)) or given == unnamed_labels(len(given))
    return len(recorded) != len(given) if numbered else recorded != given


def _few(names: list[Any], most: int = 6) -> str:
    shown = ", ".join(str(n) for n in names[:most])
    return f"[{shown}{', ...' if len(names) > most else ''}] ({len(names)})"


def _quantize_methods(recipe: Any) -> list[str]:
    """The quantization methods a recorded recipe ran (what explains an int8 model's speed in ``eval``)."""
    stages = recipe.get("stages") if isinstance(recipe, dict) else None
    return sorted({s["quantize"]["method"] for s in stages or () if isinstance(s, dict)
                   and isinstance(s.get("quantize"), dict) and isinstance(s["quantize"].get("method"), str)})
