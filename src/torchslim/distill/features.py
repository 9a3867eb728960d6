"""Intermediate outputs by module name: find modules, record their outputs with forward hooks, project widths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchslim._errors import ConfigError

__all__ = ["find_module", "FeatureRecorder", "make_projection", "format_shape"]


def format_shape(shape: Sequence[int]) -> str:
    """``(N, 10)`` for a batch of shape (64, 10): the batch size is not part of what must match."""
    return "(" + ", ".join(["N", *(str(d) for d in shape[1:])]) + ")"


def find_module(model: nn.Module, name: str, field: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``.

    Args:
        model: the network to search.
        name: dotted module name, e.g. ``"fc1"`` or ``"features.3"``.
        field: config key reported when the name is missing, e.g. ``"features[0].student"``.

    Returns:
        The module. A missing name raises ``ConfigError(field, "no module named ...; available: ...")``.
    """
    modules = dict(model.named_modules())
    modules.pop("", None)  # the root has no name to match against
    if name not in modules:
        raise ConfigError(field, f"no module named {name!r}; available: {', '.join(modules)}")
    return modules[name]


def _first_tensor(output: object) -> torch.Tensor | None:
    # Some modules return tuples (e.g. RNNs: (output, hidden)); the first tensor is the feature.
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


class FeatureRecorder:
    """Keeps the latest output of named modules while ``recording`` is True.

    Hooks stay registered until ``close()``; outside a recording they store nothing, so evaluation passes
    through the same model keep no activations alive.

    Args:
        model: the network whose modules are watched.
        names: module names (one per feature pair, repeats allowed).
        fields: config key for each name, used in the error when a name is missing.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], fields: Sequence[str]):
        self.recording = False
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        self._watched: set[str] = set()
        for name, field in zip(names, fields):
            if name in self._watched:
                continue  # one hook per module, however many pairs use it
            try:
                module = find_module(model, name, field)
            except ConfigError:
                self.close()  # leave the model as it was
                raise
            self._handles.append(module.register_forward_hook(self._hook(name)))
            self._watched.add(name)

    def _hook(self, name: str):
        def store(module: nn.Module, args: object, output: object) -> None:
            if self.recording:
                tensor = _first_tensor(output)
                if tensor is None:
                    raise TypeError(f"module {name!r} returned {type(output).__name__}, not a tensor to match")
                self.outputs[name] = tensor

        return store

    def start(self) -> None:
        """Begin a forward pass whose features are wanted; forgets the previous pass."""
        self.outputs = {}
        self.recording = True

    def stop(self) -> dict[str, torch.Tensor]:
        """End the pass and return ``{name: output}``."""
        self.recording = False
        return self.outputs

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs = {}


def make_projection(student_shape: Sequence[int], teacher_shape: Sequence[int], field: str) -> nn.Module:
    """The map from a student feature to the teacher's width: identity when widths agree, else learned.

    (N, C) features get ``nn.Linear(C_s, C_t)``; (N, C, L) get a 1x1 ``nn.Conv1d``; (N, C, H, W) a 1x1
    ``nn.Conv2d``. Only channels may differ: any other size mismatch is a config error.

    Args:
        student_shape, teacher_shape: shapes of one recorded batch.
        field: config key reported on a mismatch, e.g. ``"features[0]"``.

    Returns:
        The projection module (parameters freshly initialised; train them with the student).
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) != len(t) or s[2:] != t[2:] or len(s) not in (2, 3, 4):
        raise ConfigError(
            field,
            f"student feature shape {format_shape(s)} cannot be matched to the teacher's {format_shape(t)}; "
            "only the channel count (dim 1) may differ, for 2-, 3- or 4-dimensional features",
        )
    if s[1] == t[1]:
        return nn.Identity()
    if len(s) == 2:
        return nn.Linear(s[1], t[1])
    conv = nn.Conv1d if len(s) == 3 else nn.Conv2d
    return conv(s[1], t[1], kernel_size=1)
