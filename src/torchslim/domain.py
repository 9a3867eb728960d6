"""The domain definition: task, data, model, metric, constraints and runtime, read from YAML.

The key names are a public contract (see README): tests and users outside this repository write such files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import pydantic

from torchslim._errors import ConfigError, brief
from torchslim._validation import StrictModel, parse
from torchslim._yaml import read_yaml

TASKS = ("image-classification", "sequence-classification", "tabular-classification", "sentence-embedding")
MAX_SEED = 2**32 - 1  # what numpy and scikit-learn accept


class Fold(StrictModel):
    """One part of a k-fold cross-validation: the training and validation splits pooled and cut into ``of`` parts,
    the ``index``-th (from 0) validates and the others train; the test split stays as it was."""

    index: int = pydantic.Field(ge=0)
    of: int = pydantic.Field(ge=2, le=100)

    @pydantic.model_validator(mode="after")
    def _index_below_count(self) -> "Fold":
        if self.index >= self.of:
            raise ValueError(f"index must be below of ({self.of}): the parts are numbered 0 to {self.of - 1}")
        return self


class DataSpec(StrictModel):
    """Where the data comes from and how it is split (fractions of the whole set; ``fold``: validate on one part
    of a cross-validation instead)."""

    source: str
    test_fraction: float = pydantic.Field(0.2, gt=0, lt=1)
    val_fraction: float = pydantic.Field(0.1, gt=0, lt=1)
    seed: int = pydantic.Field(0, ge=0, le=MAX_SEED)
    fold: Optional[Fold] = None

    @pydantic.model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "DataSpec":
        if self.test_fraction + self.val_fraction >= 0.9:
            raise ValueError("test_fraction + val_fraction must leave at least 10% for training")
        return self

    @pydantic.model_serializer(mode="wrap")
    def _fold_only_when_given(self, handler: Any) -> dict[str, Any]:
        """A domain without a fold reads as it did before folds existed (its records and hashes unchanged)."""
        out = handler(self)
        if self.fold is None:
            out.pop("fold", None)
        return out


class ModelSpec(StrictModel):
    """A built-in model (``name``) or a user factory (``"pkg.mod:fn"``), with kwargs and optional weights; for a
    sentence-embedding domain, ``path``: a sentence-transformers model directory on disk."""

    name: Optional[str] = None
    factory: Optional[str] = None
    path: Optional[str] = None
    kwargs: dict[str, Any] = pydantic.Field(default_factory=dict)
    weights: Optional[str] = None

    @pydantic.field_validator("factory")
    @classmethod
    def _module_colon_function(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not _is_factory_path(value):
            raise ValueError(f"must look like 'package.module:function' (an absolute module path, no leading dots "
                             f"or empty parts), got {brief(value)}")
        return value

    @pydantic.model_validator(mode="after")
    def _one_of_name_or_factory(self) -> "ModelSpec":
        if sum(v is not None for v in (self.name, self.factory, self.path)) != 1:
            raise ValueError("give exactly one of 'name' (a built-in model), 'factory' ('module:function') or "
                             "'path' (a sentence-transformers model directory)")
        return self


def _is_factory_path(text: str) -> bool:
    """``pkg.mod:fn``: dotted identifiers, a colon, an identifier (relative imports like ``.mod`` are refused)."""
    module, sep, function = text.partition(":")
    return bool(sep) and function.isidentifier() and all(part.isidentifier() for part in module.split("."))


class LatencyLimits(StrictModel):
    batch_1: Optional[float] = pydantic.Field(None, gt=0)
    batch_64: Optional[float] = pydantic.Field(None, gt=0)


class SpeedupLimits(StrictModel):
    """Least speed-up (baseline latency / compressed latency, both measured in the same process) per batch size."""

    batch_1: Optional[float] = pydantic.Field(None, ge=1, allow_inf_nan=False)
    batch_64: Optional[float] = pydantic.Field(None, ge=1, allow_inf_nan=False)


class Constraints(StrictModel):
    """What the deployed model must meet. ``run`` reports them; ``auto`` searches for them.

    Ratios (``min_speedup``, ``min_compression_ratio``) compare two measurements of the same run, so they hold on
    a busy machine where absolute latencies do not.
    """

    max_size_bytes: Optional[int] = pydantic.Field(None, gt=0)
    max_latency_ms: Optional[LatencyLimits] = None
    max_metric_drop: Optional[float] = pydantic.Field(None, ge=0, le=1)
    min_metric: Optional[float] = pydantic.Field(None, ge=0, le=1)
    min_speedup: Optional[SpeedupLimits] = None
    min_compression_ratio: Optional[float] = pydantic.Field(None, ge=1, allow_inf_nan=False)

    @pydantic.model_validator(mode="after")
    def _drop_or_floor(self) -> "Constraints":
        if self.max_metric_drop is not None and self.min_metric is not None:
            raise ValueError("give max_metric_drop or min_metric, not both")
        return self


class Domain(StrictModel):
    name: str
    task: Literal["image-classification", "sequence-classification", "tabular-classification", "sentence-embedding"]
    data: DataSpec
    model: ModelSpec
    # accuracy / top5 for classification; cosine (to the fp32 model's embeddings) for sentence-embedding, its default
    metric: Literal["accuracy", "top5", "cosine"] = "accuracy"
    constraints: Constraints = pydantic.Field(default_factory=Constraints)
    runtime: Literal["torch", "onnxruntime"] = "torch"

    # Not user keys: where the definition came from, for error messages and relative paths.
    source: Optional[str] = pydantic.Field(None, exclude=True)
    base_dir: str = pydantic.Field(".", exclude=True)

    def resolve(self, path: str) -> Path:
        """A path named in this domain, relative to the file that names it."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def to_dict(self) -> dict[str, Any]:
        """The user-facing definition (no defaults hidden, no absolute paths)."""
        return self.model_dump(mode="json", exclude={"source", "base_dir"})


def load_domain(spec: str | Path | dict[str, Any], *, base_dir: str | Path = ".", source: str | None = None,
                prefix: str = "") -> Domain:
    """Load and validate a domain from a YAML path or an inline mapping.

    Args:
        spec: a path (relative to ``base_dir``) or the mapping itself (inline in a recipe).
        base_dir: folder that relative paths resolve against.
        source: file name used in error messages for an inline mapping.
        prefix: field path of an inline mapping inside ``source`` (e.g. ``domain``).
    """
    if isinstance(spec, (str, Path)):
        path = Path(spec) if Path(spec).is_absolute() else Path(base_dir) / spec
        data, source, base, prefix = read_yaml(path), str(path), path.parent, ""
    else:
        data, base = spec, Path(base_dir)
    if not isinstance(data, dict):
        raise ConfigError(prefix, "a domain must be a mapping of keys", source)
    if not prefix and "stages" in data and "task" not in data:
        raise ConfigError("", "a recipe (domain, stages), not a domain: `torchslim run` runs a recipe; "
                              "`torchslim auto` takes the domain file it names", source)
    if data.get("task") == "sentence-embedding" and "metric" not in data:
        data = {**data, "metric": "cosine"}
    domain = parse(Domain, data, prefix=prefix, source=source)
    _check_task(domain, prefix, source)
    return domain.model_copy(update={"source": source, "base_dir": str(base)})


def _check_task(domain: Domain, prefix: str, source: str | None) -> None:
    """Keys whose meaning depends on the task: the metric, the data source kind, a model directory."""
    def field(name: str) -> str:
        return ".".join(p for p in (prefix, name) if p)

    text = domain.task == "sentence-embedding"
    if text and domain.metric != "cosine":
        raise ConfigError(field("metric"), f"a sentence-embedding domain is measured by cosine (mean cosine "
                                           f"similarity to the fp32 model's embeddings), not {domain.metric}", source)
    if not text and domain.metric == "cosine":
        raise ConfigError(field("metric"), f"cosine is the metric of sentence-embedding domains; {domain.task} "
                                           f"uses accuracy or top5", source)
    if text and not domain.data.source.startswith("text:"):
        raise ConfigError(field("data.source"), f"a sentence-embedding domain reads sentences: "
                                                f"'text:FILE' (one sentence per line), got {brief(domain.data.source)}",
                          source)
    if text and domain.data.fold is not None:
        raise ConfigError(field("data.fold"), "a sentence-embedding domain has no validation split to cross-validate "
                                              "(its metric compares with the fp32 model's embeddings)", source)
    if not text and domain.data.source.startswith("text:"):
        raise ConfigError(field("data.source"), f"text sources are for sentence-embedding domains, not "
                                                f"{domain.task}", source)
    if text and domain.model.factory is not None:
        raise ConfigError(field("model.factory"), "a sentence-embedding model is a built-in name "
                                                  "(all-minilm-l6-v2) or a path to a sentence-transformers model "
                                                  "directory", source)
    if not text and domain.model.path is not None:
        raise ConfigError(field("model.path"), f"path names a sentence-transformers model directory (for "
                                               f"sentence-embedding domains); {domain.task} uses name or factory",
                          source)
