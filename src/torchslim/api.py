"""``torchslim.compress``: a model and data already in memory through the same runner, checks and measurements
as ``torchslim run``."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from torchslim._errors import ConfigError

__all__ = ["CompressResult", "compress"]


@dataclass
class CompressResult:
    """What :func:`compress` made.

    Attributes:
        model: the compressed ``nn.Module``, as reloaded from its artifact (what the metrics were measured on).
        metrics: the ``metrics.json`` dictionary.
        out: the run folder (``metrics.json``, ``report.*``, ``artifact/``).
    """

    model: nn.Module
    metrics: dict[str, Any]
    out: Path

    @property
    def unmet(self) -> dict[str, dict[str, Any]]:
        """The constraints the compressed model does not meet on the test split (as ``run`` reports them): name →
        ``{limit, measured, met}``; empty when every one is met (``compress`` also warns of each)."""
        return {k: c for k, c in self.metrics.get("constraints", {}).items() if not c["met"]}

    def save(self, path: str | Path) -> Path:
        """Write the artifact (the one ``torchslim run`` writes) to the folder ``path``, atomically."""
        from torchslim.artifact import fresh_dir
        from torchslim.artifact._atomic import replace_dir

        target = Path(path)
        tmp = fresh_dir(target)
        try:
            shutil.rmtree(tmp)
            shutil.copytree(self.out / "artifact", tmp)
            replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


def _tensors(split: Any, name: str) -> TensorDataset:
    """A TensorDataset (inputs float, labels int64) from a dataset of (x, y) pairs or a DataLoader of batches."""
    if isinstance(split, TensorDataset) and len(split.tensors) >= 2:
        x, y = split.tensors[:2]
    elif isinstance(split, (tuple, list)) and len(split) == 2 and all(hasattr(a, "shape") for a in split):
        raise ConfigError(f"data.{name}", "must be a dataset or DataLoader of (input, label) samples, got a pair of "
                                          "arrays: wrap them, e.g. TensorDataset(torch.as_tensor(x), "
                                          "torch.as_tensor(y))")
    else:
        batches = split if isinstance(split, DataLoader) else DataLoader(split, batch_size=256)
        xs, ys = [], []
        try:
            for batch in batches:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ConfigError(f"data.{name}", "must yield (inputs, labels) pairs")
                xs.append(torch.as_tensor(batch[0]))
                ys.append(torch.as_tensor(batch[1]))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001  (whatever the user's dataset raises while iterated)
            raise ConfigError(f"data.{name}", f"reading it failed: {type(exc).__name__}: {exc}") from None
        if not xs:
            raise ConfigError(f"data.{name}", "is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    if len(x) == 0:
        raise ConfigError(f"data.{name}", "is empty")
    whole = y.dtype.is_floating_point and bool(torch.isfinite(y).all()) and bool((y == y.round()).all())
    if not torch.is_floating_point(x) or (y.dtype.is_floating_point and not whole) or y.dim() != 1:
        raise ConfigError(f"data.{name}", "must hold float inputs and one integer class label per sample, "
                                          f"got inputs {x.dtype} and labels {y.dtype} of shape {tuple(y.shape)}")
    if int(y.min()) < 0:  # whole-valued float labels are classes, as in an npz file
        raise ConfigError(f"data.{name}", "must hold samples with labels >= 0")
    return TensorDataset(x.float().contiguous(), y.long())


def _splits(data: Sequence[Any], seed: int):
    from torchslim.data import Splits

    if not isinstance(data, (tuple, list)) or len(data) != 3:
        raise ConfigError("data", "must be (train, val, test): three datasets or DataLoaders")
    train, val, test = (_tensors(split, name) for split, name in zip(data, ("train", "val", "test")))
    shapes = {tuple(s.tensors[0].shape[1:]) for s in (train, val, test)}
    if len(shapes) != 1:
        raise ConfigError("data", f"train, val and test samples must have one shape, got {sorted(shapes)}")
    num_classes = int(max(int(s.tensors[1].max()) for s in (train, val, test))) + 1
    info = {"source": "memory", "seed": seed, "train": len(train), "val": len(val), "test": len(test),
            "test_fraction": None, "val_fraction": None, "preprocessing": "as given (in memory)",
            "stratified": False}
    return Splits(train, val, test, num_classes, [str(i) for i in range(num_classes)], info)


def _domain(metric: str, constraints: dict[str, Any] | None, runtime: str):
    """A domain for data and a model given in memory: validated like a domain file's keys."""
    from torchslim._validation import parse
    from torchslim.domain import Constraints, DataSpec, Domain, ModelSpec

    if metric not in ("accuracy", "top5"):
        raise ConfigError("metric", f"must be one of ['accuracy', 'top5'], got {metric!r}")
    if runtime not in ("torch", "onnxruntime"):
        raise ConfigError("runtime", f"must be one of ['torch', 'onnxruntime'], got {runtime!r}")
    limits = parse(Constraints, constraints or {}, prefix="constraints")
    # The model and data are not named by a file: the domain records them as given in memory.
    return Domain.model_construct(name="in-memory", task="image-classification",
                                  data=DataSpec.model_construct(source="memory", test_fraction=0.2, val_fraction=0.1,
                                                                seed=0),
                                  model=ModelSpec.model_construct(name=None, factory=None, kwargs={}, weights=None),
                                  metric=metric, constraints=limits, runtime=runtime, source=None, base_dir=".")


def _recipe(recipe: str | Path | Iterable[dict[str, Any]], domain: Any, seed: int):
    from torchslim.domain import read_yaml
    from torchslim.recipe import Recipe, parse_stages

    source = None
    if isinstance(recipe, (str, Path)):
        source = str(recipe)
        raw = read_yaml(recipe)
        if not isinstance(raw, dict) or "stages" not in raw:
            raise ConfigError("stages", "a recipe file must hold a stages list", source)
        stages = raw["stages"]
    elif isinstance(recipe, dict):  # list(a mapping) would be its keys
        raise ConfigError("recipe", "must be a list of stages, e.g. [{\"quantize\": {...}}]; got one mapping: "
                                    "put it in a list")
    else:
        stages = list(recipe)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed", "must be a non-negative integer")
    parsed = parse_stages(stages, source)
    return Recipe(domain, seed, parsed, {"seed": seed, "stages": stages}, source, ".")


def compress(model: nn.Module, data: Sequence[Dataset | DataLoader], recipe: str | Path | Iterable[dict[str, Any]],
             *, metric: str = "accuracy", constraints: dict[str, Any] | None = None, out: str | Path | None = None,
             threads: int | None = None, seed: int = 0, runtime: str = "torch") -> CompressResult:
    """Compress a model in memory with a recipe's stages, exactly as ``torchslim run`` would.

    Args:
        model: the trained ``nn.Module`` (it is not changed: the run works on a copy).
        data: ``(train, val, test)``, datasets of ``(input, label)`` pairs or DataLoaders of batches; decisions
            use train and val, the test split is only reported.
        recipe: a list of stage mappings as in YAML (``[{"prune": {"method": "magnitude", "sparsity": 0.8}}]``)
            or a recipe file (its ``stages`` are used).
        metric: ``accuracy`` or ``top5``.
        constraints: the domain's ``constraints`` keys (``max_size_bytes``, ``max_metric_drop``, ...).
        out: the run folder (default: a new temporary folder).
        threads: CPU threads (None: torch's current setting).
        seed: the run's seed.
        runtime: ``torch`` or ``onnxruntime``, where the compressed model is measured.
    Returns:
        :class:`CompressResult`; ``torchslim.load(dir, model=a_fresh_module)`` reloads ``result.save(dir)``.
    Example:
        >>> result = torchslim.compress(net, (train, val, test), [{"quantize": {"method": "kmeans", "bits": 4}}])
        >>> result.metrics["compression_ratio"], result.save("net-4bit")
    """
    import copy

    from torchslim.artifact import load_artifact, read_manifest
    from torchslim.runner import run_recipe

    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"must be a torch.nn.Module, got {type(model).__name__}")
    splits = _splits(data, seed)
    run = _recipe(recipe, _domain(metric, constraints, runtime), seed)
    from torchslim.search.study import STUDY_MARKER

    if out is not None and (Path(out) / STUDY_MARKER).exists():
        raise ConfigError("out", f"{out} holds a search ({STUDY_MARKER}): compress into another folder")
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="torchslim-"))
    given = copy.deepcopy(model).cpu().eval()
    metrics = run_recipe(run, folder, threads=threads, model=copy.deepcopy(given), splits=splits)
    artifact = folder / "artifact"
    if "module" in read_manifest(artifact)["architecture"]:
        reloaded, _ = load_artifact(artifact, model=given)
    else:  # a stage replaced the model by a built-in or factory student the recipe names
        reloaded, _ = load_artifact(artifact, trust_code=True)
    result = CompressResult(reloaded, metrics, folder)
    if result.unmet:  # run prints these lines; in Python they would pass unnoticed
        import warnings

        warnings.warn("constraints not met: " + "; ".join(f"{k}: limit {c['limit']:g}, measured {c['measured']:.6g}"
                                                          for k, c in result.unmet.items()), stacklevel=2)
    return result
