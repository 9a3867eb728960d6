"""Distillation config: the recipe's ``distill:`` keys, one field each, validated on construction.

Recipe form (every key optional)::

    - distill:
        teacher: baseline            # baseline | PATH of a torchslim artifact folder (relative to the recipe)
        student: {name: mnist1d_cnn, kwargs: {width: 0.25}}   # omit to distill into the current model
        temperature: 4.0
        alpha: 0.9
        features: [{student: fc1, teacher: fc1, weight: 0.1}]
        regularization: {kind: l2, weight: 0.0001}
        epochs: 40
        lr: 0.001
        batch_size: 64
        augment: none                # none | shift | mixup | shift+mixup; the teacher sees the same inputs

``teacher`` and ``student`` stay plain values (a string; a mapping); the recipe runner resolves them to modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from torchslim._errors import ConfigError, brief
from torchslim._validation import finite_float, learning_rate
from torchslim.train import AUGMENTATIONS  # the training loop applies them

__all__ = ["FeatureMatch", "Regularization", "KDConfig", "config_from_mapping"]

REGULARIZATION_KINDS = ("l1", "l2")


def _number(name: str, value: Any) -> float:
    number = finite_float(value)
    if number is None:
        raise ConfigError(name, f"must be a finite number, got {brief(value)}")
    return number


MAX_BATCH_SIZE = 2**31 - 1  # larger ones overflow the data loader's sampler
MAX_EPOCHS = 1_000_000


def _positive_int(name: str, value: Any, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {brief(value)}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"must be at most {maximum}, got {brief(value)}")
    return value


def _non_negative(name: str, value: Any) -> float:
    number = _number(name, value)
    if number < 0:
        raise ConfigError(name, f"must be >= 0, got {value!r}")
    return number


def _module_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(name, f"must be a module name such as 'fc1', got {value!r}")
    return value


@dataclass(frozen=True)
class FeatureMatch:
    """One pair of intermediate outputs to match: the student's module ``student`` against the teacher's ``teacher``.

    Args:
        student: name of a module in ``student.named_modules()``, e.g. ``"fc1"`` or ``"features.3"``.
        teacher: name of a module in ``teacher.named_modules()``.
        weight: factor on this pair's mean squared error.
    """

    student: str
    teacher: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        _module_name("student", self.student)
        _module_name("teacher", self.teacher)
        object.__setattr__(self, "weight", _non_negative("weight", self.weight))


@dataclass(frozen=True)
class Regularization:
    """Weight penalty ``weight * R(w)`` on the student; ``kind`` "l2": R = sum of w**2, "l1": R = sum of |w|.

    Only parameters with two or more dimensions count (linear and conv weights, embeddings); biases and
    normalisation scales are left out, as weight decay usually leaves them out.
    """

    kind: str = "l2"
    weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in REGULARIZATION_KINDS:
            raise ConfigError("kind", f"must be one of {', '.join(REGULARIZATION_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "weight", _non_negative("weight", self.weight))


@dataclass(frozen=True)
class KDConfig:
    """Knowledge distillation: train the student on the teacher's softened outputs (Hinton et al., 2015).

    loss = alpha * T**2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(y, z_s)
           + sum_i features[i].weight * MSE(proj_i(f_s,i), f_t,i) + regularization.weight * R(w_s)

    Args:
        teacher: "baseline" (the model before the first compressing stage) or the path of a torchslim artifact
            folder, relative to the recipe file.
        student: model spec (``{"name": ..., "kwargs": {...}}`` or ``{"factory": "pkg.mod:fn", ...}``) or a
            string; None distills into the current model.
        temperature: T > 0; softens both distributions. T**2 keeps the soft-target gradients' scale independent of T.
        alpha: share of the soft-target term, in [0, 1]; 0 is plain cross-entropy, 1 ignores the labels.
        features: intermediate outputs to match (see ``FeatureMatch``).
        regularization: optional weight penalty on the student (see ``Regularization``).
        epochs, lr, batch_size: passed to the training loop.
        augment: "none", "shift" (random translation by up to one position), "mixup" (pairs of samples and
            their labels blended) or "shift+mixup", applied by the recipe's loop; teacher and student see the
            same augmented batch, so the student matches the teacher's function on inputs it was not given.
    """

    teacher: str = "baseline"
    student: Mapping[str, Any] | str | None = None
    temperature: float = 4.0
    alpha: float = 0.9
    features: tuple[FeatureMatch, ...] = field(default=())
    regularization: Regularization | None = None
    epochs: int = 40
    lr: float = 1e-3
    batch_size: int = 64
    augment: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ConfigError("teacher", f"must be 'baseline' or a path, got {self.teacher!r}")
        if self.student is not None and not isinstance(self.student, (str, Mapping)):
            raise ConfigError("student", f"must be a model spec (mapping) or a string, got {self.student!r}")
        if isinstance(self.student, Mapping):
            object.__setattr__(self, "student", dict(self.student))  # a copy: the caller's dict may change
        temperature = _number("temperature", self.temperature)
        if temperature <= 0:
            raise ConfigError("temperature", f"must be > 0, got {self.temperature!r}")
        object.__setattr__(self, "temperature", temperature)
        alpha = _number("alpha", self.alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError("alpha", f"must be in [0, 1], got {self.alpha!r}")
        object.__setattr__(self, "alpha", alpha)
        if isinstance(self.features, (str, bytes)) or not isinstance(self.features, Sequence):
            raise ConfigError("features", f"must be a list of FeatureMatch, got {self.features!r}")
        for i, match in enumerate(self.features):
            if not isinstance(match, FeatureMatch):
                raise ConfigError(f"features[{i}]", f"must be a FeatureMatch, got {match!r}")
        object.__setattr__(self, "features", tuple(self.features))
        if self.regularization is not None and not isinstance(self.regularization, Regularization):
            raise ConfigError("regularization", f"must be a Regularization, got {self.regularization!r}")
        _positive_int("epochs", self.epochs, MAX_EPOCHS)
        _positive_int("batch_size", self.batch_size, MAX_BATCH_SIZE)
        object.__setattr__(self, "lr", learning_rate("lr", self.lr))
        if self.augment not in AUGMENTATIONS:
            raise ConfigError("augment", f"must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")

    def to_mapping(self) -> dict[str, Any]:
        """The recipe form of this config (plain JSON/YAML values); ``config_from_mapping`` reads it back."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["student"] = dict(self.student) if isinstance(self.student, Mapping) else self.student
        out["features"] = [{"student": m.student, "teacher": m.teacher, "weight": m.weight} for m in self.features]
        if self.regularization is not None:
            out["regularization"] = {"kind": self.regularization.kind, "weight": self.regularization.weight}
        return out

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        """The recipe form (as ``to_mapping``), under the name the runner uses for every stage config."""
        return self.to_mapping()


def _reject_unknown(d: Mapping[str, Any], known: Sequence[str], prefix: str = "") -> None:
    for key in d:
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown key; expected one of: {', '.join(sorted(known))}")


def _mapping(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(name, f"must be a mapping, got {value!r}")
    return value


def config_from_mapping(d: Mapping[str, Any]) -> KDConfig:
    """Build a ``KDConfig`` from the recipe's ``distill:`` mapping, rejecting unknown keys and bad values.

    Args:
        d: the mapping under ``distill:``; None or {} gives the defaults.

    Returns:
        The validated config. Errors are ``ConfigError`` whose field is the key path, e.g. ``features[0].weight``.
    """
    d = _mapping("distill", {} if d is None else d)
    _reject_unknown(d, [f.name for f in fields(KDConfig)])
    kwargs = dict(d)
    if "features" in d:
        raw = d["features"]
        if raw is None:
            raw = []
        if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence):
            raise ConfigError("features", f"must be a list of {{student, teacher, weight}}, got {raw!r}")
        matches = []
        for i, item in enumerate(raw):
            item = _mapping(f"features[{i}]", item)
            _reject_unknown(item, [f.name for f in fields(FeatureMatch)], prefix=f"features[{i}].")
            for required in ("student", "teacher"):
                if required not in item:
                    raise ConfigError(f"features[{i}].{required}", "is required")
            try:
                matches.append(FeatureMatch(**item))
            except ConfigError as err:
                raise err.within(f"features[{i}]") from None
        kwargs["features"] = tuple(matches)
    if d.get("regularization") is not None:
        reg = _mapping("regularization", d["regularization"])
        _reject_unknown(reg, [f.name for f in fields(Regularization)], prefix="regularization.")
        try:
            kwargs["regularization"] = Regularization(**reg)
        except ConfigError as err:
            raise err.within("regularization") from None
    return KDConfig(**kwargs)
