"""The search space: which compression a candidate applies, as plain parameters, and the recipe they make.

A candidate is a recipe (the same stage keys ``torchslim run`` takes), so every candidate is run, saved, reloaded
and measured by the one runner. ``suggest_params`` asks an Optuna trial for the parameters; ``recipe_from_params``
is a pure function from parameters to the recipe mapping, so the mapping is testable without Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

from torchslim.domain import Domain

# student width multipliers, steps of about sqrt(2) (about 2x in the hidden layers' parameters); 1.0 keeps the
# baseline's width
WIDTHS = (0.25, 0.35, 0.5, 0.7, 1.0)
STRUCTURED = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # fractions of channels / neurons removed
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # fractions of weights zeroed by magnitude
BITS = (2, 3, 4, 5, 6, 8)  # k-means and weight-only bits
INT8_METHODS = ("static", "dynamic")  # run by ONNX Runtime's int8 kernels: offered for runtime onnxruntime only
# How a pruning stage's sparsity is shared among layers: ``stage`` as the stage's keys say (one global magnitude
# threshold; every layer's units at the same fraction), ``sensitivity`` each layer at most the stage's sparsity,
# by what pruning it alone costs on the validation split (``prune: {sensitivity: ...}``).
ALLOCATIONS = ("stage", "sensitivity")
# The per-layer bound of a ``sensitivity`` allocation, as a share of the domain's max_metric_drop: a layer is
# measured alone, pruned in one shot without fine-tuning, and several layers' losses add up when all are pruned,
# so one layer may cost at most half of what the whole model may lose (fine-tuning recovers part of the sum).
SENSITIVITY_DROP_SHARE = 0.5
# A candidate's pruning stages end their fine-tuning on the moving average of the weights over its steps (decay
# 0.99, ``finetune.ema``): after a cut, the last epoch's weights vary by points with the data order. Rerunning the
# pruned candidates of three searches with it (benchmarks/auto.py, seeds 0 and 1: the 37 of at most 4.6 kB each;
# domains/mnist1d.yaml: all 21), mean test drop 1.58 -> 1.13, 0.49 -> 0.24 and -1.74 -> -2.20 points (55 better,
# 22 worse, the worst by 0.83). Fine-tuning on the soft outputs of the model before the cut as well
# (``finetune.distill``) gave 1.04 and 0.44 on digits but +0.35 on MNIST-1D (20 of 21 worse): its baseline is
# undertrained, and the labels teach a pruned model more than the model before the cut does.
PRUNE_EMA = 0.99


@dataclass(frozen=True)
class SearchSettings:
    """What is not searched: the baseline's training and the fine-tune budget's upper end.

    Args:
        baseline_epochs: epochs of the baseline's ``train`` stage, every candidate recipe's first (the same seed
            and stage give the same weights: a search trains them once, see ``search.baseline``). A narrower
            student, trained from scratch, is distilled for twice as many epochs: distillation with augmented
            inputs keeps improving long after training from labels has converged ("patient and consistent"
            teaching, Beyer et al. 2022); a search distils each width once, so the patience costs little.
        max_epochs: most epochs of any fine-tune or distillation stage of a candidate after the student's.
        lr: the baseline's learning rate; fine-tuning uses a fraction of it.
        batch_size: batch size of every training stage.
        student_lr_factor: the student's distillation runs at ``lr`` times this (soft targets from a trained
            teacher tolerate a larger step than training from labels; ``recipes/digits/deep_compression.yaml``
            distils at 10x its baseline's rate too).
        stop_slack: a candidate is stopped after an intermediate stage when its validation metric is below the
            floor its constraints set (``baseline - max_metric_drop`` or ``min_metric``) by more than this many
            times the drop they allow plus what the stages it has still to run won back in nine of ten of the
            study's finished candidates (``search.recovery``; 0 turns stopping off).
        drop_margin: among feasible candidates (every constraint met as measured, as ``run`` reports it), those
            whose validation drop plus this many of its standard errors (``search.noise``) is within the limit
            are preferred, and the sampler is told the constraints so judged. One standard error guards against
            picking the candidate a small split flatters most; it does not decide feasibility, because on a split
            of a few hundred samples a single sample lost already costs about a point. First among them come
            those whose losses alone (no gains counted) plus this many of their standard errors are within it;
            0 turns both preferences off.
    """

    baseline_epochs: int = 40
    max_epochs: int = 20
    lr: float = 0.001
    batch_size: int = 32
    student_lr_factor: float = 10.0
    stop_slack: float = 1.0
    drop_margin: float = 1.0
    augment: Optional[str] = None  # of every distillation; None: ``shift`` for inputs with 1 or 2 spatial axes


def settings_for_data(settings: SearchSettings, input_shape: tuple[int, ...]) -> SearchSettings:
    """``settings`` with the distillation's augmentation chosen for the data when not given: ``shift`` (one step
    along each spatial axis; teacher and student see the same shifted input) for (C, L) or (C, H, W) inputs,
    ``none`` for flat feature vectors, which have no neighbours to shift into."""
    if settings.augment is not None:
        return settings
    return replace(settings, augment="shift" if len(input_shape) in (2, 3) else "none")


def quant_methods(domain: Domain) -> tuple[str, ...]:
    """Quantization choices for the domain: int8 only where ONNX Runtime runs the model."""
    methods = ("none", "kmeans", "weight")
    return methods + INT8_METHODS if domain.runtime == "onnxruntime" else methods


def asks_allocation(params: dict[str, Any], domain: Domain) -> bool:
    """Whether a candidate chooses an ``allocation``: it prunes, and the domain bounds the metric's drop (the
    per-layer bound is a share of that drop, a plain number in the recipe)."""
    prunes = params.get("structured", 0.0) > 0 or params.get("sparsity", 0.0) > 0
    return prunes and domain.constraints.max_metric_drop is not None


def suggest_params(trial: Any, domain: Domain, settings: SearchSettings) -> dict[str, Any]:
    """Ask an Optuna trial for one candidate's parameters (define-by-run: bits only when a method needs them).

    Returns:
        ``width`` (1.0 for a factory model: only built-in models take ``width``), ``structured`` and
        ``sparsity`` (0 = off), ``allocation`` (when :func:`asks_allocation`: one choice for both pruning
        stages), ``kd`` (distillation from the baseline after pruning, and after k-means), ``quant``, ``bits``
        (for ``kmeans`` / ``weight``) and ``epochs``.
    """
    params: dict[str, Any] = {"width": 1.0}
    if domain.model.name is not None:
        params["width"] = trial.suggest_categorical("width", WIDTHS)
    params["structured"] = trial.suggest_categorical("structured", (0.0, *STRUCTURED))
    params["sparsity"] = trial.suggest_categorical("sparsity", (0.0, *SPARSITIES))
    if asks_allocation(params, domain):
        params["allocation"] = trial.suggest_categorical("allocation", ALLOCATIONS)
    params["kd"] = trial.suggest_categorical("kd", (False, True))
    params["quant"] = trial.suggest_categorical("quant", quant_methods(domain))
    if params["quant"] in ("kmeans", "weight"):
        params["bits"] = trial.suggest_categorical("bits", BITS)
    params["epochs"] = trial.suggest_int("epochs", 1, settings.max_epochs)
    return params


# Standard compressions the search runs first, before its sampler proposes anything: Deep Compression (Han et
# al. 2016: magnitude pruning to about 90 %, k-means weight sharing at 4-5 bits, fine-tuned) on the model and on
# distilled students of half and a quarter of its width (sparsity stepping down as the width halves: a narrower
# network has fewer redundant weights); and where ONNX Runtime runs the model, post-training static int8 (Jacob et
# al. 2018) on the model, on distilled students of half and a quarter of its width, and after removing half the
# channels. None is fitted to a data set.
DEEP_COMPRESSION = ({"width": 1.0, "structured": 0.0, "sparsity": 0.9, "kd": True, "quant": "kmeans", "bits": 5},
                    {"width": 0.5, "structured": 0.0, "sparsity": 0.8, "kd": True, "quant": "kmeans", "bits": 4},
                    {"width": 0.25, "structured": 0.0, "sparsity": 0.7, "kd": True, "quant": "kmeans", "bits": 4})
INT8 = ({"width": 1.0, "structured": 0.0, "sparsity": 0.0, "kd": False, "quant": "static"},
        {"width": 0.5, "structured": 0.0, "sparsity": 0.0, "kd": True, "quant": "static"},
        {"width": 0.25, "structured": 0.0, "sparsity": 0.0, "kd": True, "quant": "static"},
        {"width": 1.0, "structured": 0.5, "sparsity": 0.0, "kd": True, "quant": "static"})


def starting_points(domain: Domain, settings: SearchSettings) -> list[dict[str, Any]]:
    """The parameters of the standard compressions a new search runs first (see ``DEEP_COMPRESSION``, ``INT8``),
    with the most fine-tuning the search allows; a factory model (no ``width``) gets the full-width ones. Each
    holds exactly the keys :func:`suggest_params` asks for it (``allocation: stage`` where asked), so its trial's
    parameters equal it."""
    points = [*DEEP_COMPRESSION, *(INT8 if domain.runtime == "onnxruntime" else ())]
    if domain.model.name is None:
        points = [{k: v for k, v in p.items() if k != "width"} for p in points if p["width"] == 1.0]
    points = [{**p, "allocation": "stage"} if asks_allocation(p, domain) else p for p in points]
    return [{**p, "epochs": settings.max_epochs} for p in points]


def shared_stages(params: dict[str, Any]) -> int:
    """How many first stages of the candidate's recipe every candidate with the same ``width`` has: the
    baseline's training, and the student's distillation when there is one."""
    return 2 if float(params.get("width", 1.0)) < 1.0 else 1


def recipe_from_params(params: dict[str, Any], domain: Domain, domain_ref: Any, settings: SearchSettings,
                       seed: int) -> dict[str, Any]:
    """The recipe mapping (``domain``, ``seed``, ``stages``) a candidate's parameters describe.

    Stage order: train the baseline → distill into a narrower student → structured pruning → magnitude pruning →
    distill from the baseline → quantize → (k-means) distill again, as ``recipes/digits/deep_compression.yaml``
    does. Every stage that changes weights after the student's gets ``params["epochs"]`` of training; pruning's
    ends on the weights' average (``PRUNE_EMA``).

    Args:
        params: as returned by :func:`suggest_params`.
        domain: the validated domain (for the model spec and the runtime).
        domain_ref: what the recipe's ``domain`` key holds: an absolute path or an inline mapping.
        seed: the recipe's seed.
    """
    epochs, bs, lr = int(params["epochs"]), settings.batch_size, settings.lr
    by_sensitivity = _by_sensitivity(params, domain)
    augment = settings.augment or "none"
    prune_finetune = {"epochs": epochs, "lr": lr, "batch_size": bs, "ema": PRUNE_EMA}
    stages: list[dict[str, Any]] = [{"train": {"epochs": settings.baseline_epochs, "lr": lr, "batch_size": bs}}]
    width = float(params.get("width", 1.0))
    if width < 1.0:
        if domain.model.name is None:
            raise ValueError("width: only built-in models take a width")
        kwargs = dict(domain.model.kwargs)
        kwargs["width"] = float(kwargs.get("width", 1.0)) * width
        # The student starts from scratch: its budget depends on the baseline's, not on the candidate's fine-tune
        # budget, so every candidate of one width shares it (a search distils it once).
        stages.append({"distill": {"teacher": "baseline", "student": {"name": domain.model.name, "kwargs": kwargs},
                                   "temperature": 4.0, "alpha": 0.9, "epochs": 2 * settings.baseline_epochs,
                                   "lr": settings.student_lr_factor * lr, "batch_size": bs, "augment": augment}})
    if params.get("structured", 0.0) > 0:
        structured = float(params["structured"])
        stages.append({"prune": {"method": "structured", "sparsity": structured, "importance": "l2",
                                 "reconstruct": True, "schedule": {"kind": "oneshot"}, "finetune": prune_finetune,
                                 **(_sensitivity("structured", structured, domain) if by_sensitivity else {})}})
    if params.get("sparsity", 0.0) > 0:
        sparsity = float(params["sparsity"])
        steps = min(3, epochs)  # fine-tune epochs are spread over the steps: at least one each
        schedule = {"kind": "polynomial", "steps": steps} if steps > 1 else {"kind": "oneshot"}
        # With a sensitivity allocation every layer gets an override, so none is left to the global threshold
        # (each ramps to its own sparsity over the schedule's steps); ``global`` stays so that the check before
        # training does not reject the cap for a layer the analysis would lower.
        # After structured pruning (and its least-squares refit), one layer's weights can all fall below the
        # global threshold, which the stage refuses (a layer of zeros): each layer is then pruned to the sparsity
        # on its own.
        scope = "layer" if params.get("structured", 0.0) > 0 else "global"
        stages.append({"prune": {"method": "magnitude", "sparsity": sparsity, "scope": scope,
                                 "schedule": schedule, "finetune": prune_finetune,
                                 **(_sensitivity("sparsity", sparsity, domain) if by_sensitivity else {})}})
    if params.get("kd", False):
        stages.append({"distill": {"teacher": "baseline", "temperature": 4.0, "alpha": 0.9, "epochs": epochs,
                                   "lr": lr, "batch_size": bs, "augment": augment}})
    quant = params.get("quant", "none")
    if quant == "kmeans":
        stages.append({"quantize": {"method": "kmeans", "bits": int(params["bits"]),
                                    "finetune": {"epochs": epochs, "lr": lr / 10}}})
        if params.get("kd", False):
            # the centroids learn from the baseline's soft outputs too: k-means loses what pruning's fine-tune
            # recovered, and soft targets recover more of it than the labels the k-means fine-tune uses
            stages.append({"distill": {"teacher": "baseline", "temperature": 4.0, "alpha": 0.9, "epochs": epochs,
                                       "lr": lr / 10, "batch_size": bs, "augment": augment}})
    elif quant == "weight":
        stages.append({"quantize": {"method": "weight", "bits": int(params["bits"]), "granularity": "channel"}})
    elif quant == "static":
        stages.append({"quantize": {"method": "static", "bits": 8, "granularity": "channel",
                                    "calibration": {"batches": 8}}})
    elif quant == "dynamic":
        stages.append({"quantize": {"method": "dynamic", "bits": 8}})
    elif quant != "none":
        raise ValueError(f"quant: unknown method {quant!r}")
    return {"domain": domain_ref, "seed": seed, "stages": stages}


def _by_sensitivity(params: dict[str, Any], domain: Domain) -> bool:
    allocation = params.get("allocation", "stage")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation: must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if allocation == "sensitivity" and domain.constraints.max_metric_drop is None:
        raise ValueError("allocation: sensitivity needs the domain's constraints.max_metric_drop")
    return allocation == "sensitivity"


def sensitivity_grid(key: str, cap: float) -> list[float]:
    """The sparsities a ``sensitivity`` allocation tries for the pruning stage of params key ``key``
    (``structured`` or ``sparsity``) whose sparsity ``cap`` is each layer's most: the method's choices up to it."""
    choices = {"structured": STRUCTURED, "sparsity": SPARSITIES}[key]
    return sorted({c for c in choices if c <= cap} | {cap})


def sensitivity_bound(domain: Domain) -> float:
    """The per-layer drop bound of a ``sensitivity`` allocation: ``SENSITIVITY_DROP_SHARE`` of the domain's."""
    return SENSITIVITY_DROP_SHARE * float(domain.constraints.max_metric_drop)


def _sensitivity(key: str, cap: float, domain: Domain) -> dict[str, Any]:
    """The ``sensitivity`` key of the pruning stage of params key ``key``."""
    return {"sensitivity": {"sparsities": sensitivity_grid(key, cap), "max_drop": sensitivity_bound(domain)}}


def describe(params: dict[str, Any]) -> str:
    """A candidate in brief, for progress lines and tables: ``w0.5 struct0.3 sparse0.9 kd kmeans4 ft5``; a
    sensitivity allocation marks the pruning stages: ``struct0.3/sens sparse0.9/sens``."""
    parts = []
    sens = "/sens" if params.get("allocation") == "sensitivity" else ""
    if params.get("width", 1.0) < 1.0:
        parts.append(f"w{params['width']:g}")
    if params.get("structured", 0.0) > 0:
        parts.append(f"struct{params['structured']:g}{sens}")
    if params.get("sparsity", 0.0) > 0:
        parts.append(f"sparse{params['sparsity']:g}{sens}")
    if params.get("kd"):
        parts.append("kd")
    quant = params.get("quant", "none")
    if quant in ("kmeans", "weight"):
        parts.append(f"{quant}{params['bits']}")
    elif quant != "none":
        parts.append(f"{quant}-int8")
    parts.append(f"ft{params.get('epochs', 0)}")
    return " ".join(parts)
