"""The ``distill`` recipe stage: train a student (a new model, or the current one) on a teacher's soft outputs.

Recipe form (keys as in ``KDConfig``)::

    - distill:
        teacher: baseline                                  # or the path of a torchslim artifact folder
        student: {name: mnist1d_cnn, kwargs: {width: 0.25}}  # omit to distill into the current model
        temperature: 4.0
        alpha: 0.9
        epochs: 40

``teacher: baseline`` is the model before the first compressing stage (this stage compresses, so at the latest
the model just before it); a path is resolved relative to the recipe file. After the stage the student is the
run's model: later stages and the reported figures are the student's, the baseline stays the teacher's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim._validation import parse
from torchslim._yaml import os_reason
from torchslim.distill.api import distill
from torchslim.distill.config import KDConfig, config_from_mapping
from torchslim.distill.objective import StudentWithExtras, make_loss_fn
from torchslim.domain import ModelSpec
from torchslim.evaluate import count_params
from torchslim.stages import StageHandler, register_stage

if TYPE_CHECKING:
    from torchslim.runner import RunContext
    from torchslim.train import FitResult

__all__ = ["parse_stage", "student_spec"]


def student_spec(student: Any) -> ModelSpec | None:
    """The ``student`` key as a model spec: a mapping like the domain's ``model``, or a built-in model's name.

    Returns:
        None when the key is omitted (distill into the current model). Errors name ``student.<key>``.
    """
    if student is None:
        return None
    if isinstance(student, str):
        return parse(ModelSpec, {"name": student}, prefix="student")
    return parse(ModelSpec, dict(student), prefix="student")


def parse_stage(body: Any, *, prefix: str, source: str | None) -> KDConfig:
    """The recipe's ``distill:`` mapping as a ``KDConfig``; a bad key raises ``ConfigError`` naming
    ``prefix.key`` in ``source``, e.g. ``recipe.yaml: stages[1].distill.alpha: must be in [0, 1], got 1.5``."""
    try:
        config = config_from_mapping(body)
        student_spec(config.student)
    except ConfigError as exc:
        raise exc.within(prefix, source) from None
    return config


def _as_field(exc: ConfigError, field: str) -> ConfigError:
    """A model-building error (``model.kwargs: ...``) re-attributed to this stage's key (``student.kwargs``)."""
    sub = exc.field.removeprefix("model").lstrip(".")
    detail = f"{exc.source}: {exc.message}" if exc.source else exc.message
    return ConfigError(".".join(p for p in (field, sub) if p), detail)


def _teacher(ctx: "RunContext", cfg: KDConfig) -> nn.Module:
    """The teacher as a module of its own: a copy of the baseline (or of the current model), or a loaded artifact."""
    if cfg.teacher == "baseline":
        source = ctx.baseline if ctx.baseline is not None else ctx.model
        return copy.deepcopy(source).requires_grad_(False).eval()
    from torchslim.artifact import load_artifact, read_manifest

    path = Path(cfg.teacher)
    try:
        path = path.expanduser()
    except RuntimeError:  # ~user of an unknown user: the path stays as written
        pass
    if not path.is_absolute():
        path = Path(ctx.recipe.base_dir) / path
    try:
        found = path.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ConfigError("teacher", f"cannot read {path}: {os_reason(exc)}") from None
    if not found:
        raise ConfigError("teacher", f"no torchslim artifact folder at {path}")
    try:
        # A teacher built by a factory may import it only when it is the factory the user's own domain names.
        arch = read_manifest(path).get("architecture")
        own = isinstance(arch, dict) and arch.get("factory") is not None \
            and arch.get("factory") == ctx.domain.model.factory
        teacher, _ = load_artifact(path, trust_code=own, code_dir=ctx.domain.base_dir)
    except ConfigError as exc:
        raise _as_field(exc, "teacher") from None
    return teacher.requires_grad_(False).eval()


def _student(ctx: "RunContext", cfg: KDConfig) -> tuple[nn.Module, dict[str, Any] | None]:
    """A freshly built student and its manifest architecture, or the current model (architecture None)."""
    from torchslim.models import build_model, with_data_kwargs
    from torchslim.runner import architecture_of

    spec = student_spec(cfg.student)
    if spec is None:
        return ctx.model, None
    try:
        spec = with_data_kwargs(spec, ctx.recipe.base_dir, ctx.splits.input_shape, ctx.splits.num_classes)
        student = build_model(spec, ctx.recipe.base_dir)
    except ConfigError as exc:
        raise _as_field(exc, "student") from None
    return student, architecture_of(spec)


def _probe(ctx: "RunContext", cfg: KDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = ctx.splits.train.tensors
    return x[: cfg.batch_size], y[: cfg.batch_size]  # (B, *input_shape), (B,)


@torch.no_grad()
def _check_forward(model: nn.Module, x: torch.Tensor, field: str) -> None:
    try:
        model.eval()(x)
    except Exception as exc:  # any failure here means the model does not take this data
        raise ConfigError(field, f"forward pass on data of shape {tuple(x.shape)} failed: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _check(ctx: "RunContext", cfg: KDConfig) -> None:
    """Before any training: the teacher loads and takes the data, the student builds and takes it, their outputs
    have the same shape, and every feature name exists in its network (the student's as the spec builds it).

    ``ctx`` is the checks' own copy of the run context: a built student becomes its model, so the stages after
    this one are checked against the student's layers, as they will run on it.
    """
    teacher = _teacher(ctx, cfg)
    student, architecture = _student(ctx, cfg)
    x, y = _probe(ctx, cfg)
    _check_forward(teacher, x, "teacher")
    _check_forward(student, x, "student")
    make_loss_fn(student, teacher, cfg, (x, y)).close()  # output shapes, feature names and widths
    if architecture is not None:
        if ctx.baseline is None:  # as the run takes it: the model before the first compressing stage
            ctx.baseline = ctx.model
        ctx.model, ctx.architecture = student, architecture


def _runner_loop(ctx: "RunContext", cfg: KDConfig, results: list["FitResult"]) -> Callable[..., "FitResult"]:
    """``distill``'s training loop as the run's own ``ctx.fit`` (seed, device, checkpoint, resume, DDP, step hooks).

    ``data`` is the run's training split, which ``ctx.fit`` reads itself; ``cfg.augment`` applies to it.
    """
    from torchslim.train import TrainConfig

    def loop(*, model, data, loss_fn, extra_params, epochs, lr, batch_size):
        trained = StudentWithExtras(model, list(extra_params)) if extra_params else model
        train_cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, augment=cfg.augment)
        result = ctx.fit(trained, train_cfg, desc="distill",
                         loss_fn=lambda m, x, y: loss_fn(m, (x, y)))  # (model, x, y) -> (model, batch)
        results.append(result)
        return result

    return loop


def _run(ctx: "RunContext", cfg: KDConfig) -> dict[str, Any]:
    teacher = _teacher(ctx, cfg).to(ctx.device)
    student, architecture = _student(ctx, cfg)
    student.to(ctx.device)  # before distill: the feature projections are created on the student's device
    if architecture is not None and ctx.step_hooks:
        # Hooks from earlier stages (e.g. pruning masks) belong to the model being replaced.
        ctx.log(f"distill: {len(ctx.step_hooks)} step hook(s) of the previous model dropped with it")
        ctx.step_hooks.clear()
    results: list[FitResult] = []
    try:
        distill(student, teacher, ctx.splits.train, cfg, fit=_runner_loop(ctx, cfg, results))
    except ConfigError as exc:  # e.g. the loss diverged: the message names this stage's lr
        raise exc.within(f"stages[{ctx.stage_index}].distill", ctx.recipe.source) from None
    if architecture is not None:
        ctx.model, ctx.architecture = student, architecture
    record = {
        "teacher": cfg.teacher,
        "student": "current model" if architecture is None else architecture.get("name") or architecture["factory"],
        "teacher_params": count_params(teacher)[0],
        "student_params": count_params(student)[0],
        "temperature": cfg.temperature,
        "alpha": cfg.alpha,
        "epochs": cfg.epochs,
        "best_epoch": results[-1].best_epoch,
        "teacher_val_metric": ctx.validate(teacher),
        "val_metric": results[-1].best_val,
    }
    return record


register_stage(StageHandler("distill", KDConfig, _run, compresses=True, check=_check, parser=parse_stage))
