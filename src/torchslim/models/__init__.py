"""Model building: built-in reference models and user factories (``pkg.mod:fn`` + safetensors weights)."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim.models._reference import BUILTIN_MODELS, LeNet5, LeNet300100, MNIST1DCNN, MNIST1DMLP

__all__ = ["BUILTIN_MODELS", "build_model", "input_shape_of", "load_weights_", "LeNet300100", "LeNet5",
           "MNIST1DCNN", "MNIST1DMLP"]


def _factory(path: str, base_dir: str | Path) -> Any:
    """The callable ``module:function`` names, its module imported with ``base_dir`` first on ``sys.path``.

    ``sys.path`` is restored afterwards: a factory next to the domain file is importable without installing it,
    and no folder stays on the path for later imports.
    """
    module_name, _, fn_name = path.partition(":")
    saved = list(sys.path)
    sys.path.insert(0, str(Path(base_dir).resolve()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("model.factory", f"cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  (the module's own code failed while it was imported)
        detail = " ".join(str(exc).split())[:150]
        raise ConfigError("model.factory", f"importing module {module_name!r} failed: {type(exc).__name__}: "
                                           f"{detail}") from None
    finally:
        sys.path[:] = saved
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError("model.factory", f"module {module_name!r} has no callable {fn_name!r}")
    return fn


def build_model(spec: Any, base_dir: str | Path = ".") -> nn.Module:
    """Build the (untrained or weight-loaded) model a :class:`~torchslim.domain.ModelSpec` describes.

    Args:
        spec: a ``ModelSpec`` (``name`` or ``factory``, ``kwargs``, optional ``weights``).
        base_dir: folder that a relative ``weights`` path and factory module resolve against.
    Returns:
        the model in eval mode, on the CPU.
    """
    if spec.name is not None:
        if spec.name not in BUILTIN_MODELS:
            raise ConfigError("model.name", f"unknown model {spec.name!r}; known: {', '.join(BUILTIN_MODELS)}")
        ctor = BUILTIN_MODELS[spec.name]
        field = "model.kwargs"
    else:
        ctor, field = _factory(spec.factory, base_dir), "model.kwargs"
    try:
        inspect.signature(ctor).bind(**spec.kwargs)
    except TypeError as exc:
        raise ConfigError(field, f"{exc}") from None
    except ValueError:  # builtins without a signature: let the call decide
        pass
    try:
        model = ctor(**spec.kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(field, str(exc)) from None
    if not isinstance(model, nn.Module):
        raise ConfigError("model.factory", f"must return a torch.nn.Module, got {type(model).__name__}")
    if spec.weights is not None:
        load_weights_(model, Path(base_dir) / spec.weights if not Path(spec.weights).is_absolute() else spec.weights)
    return model.eval()


def load_weights_(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors state dict into ``model``; mismatched keys or shapes are a ConfigError."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ConfigError("model.weights", f"file not found: {p}")
    try:
        state = load_file(str(p))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ConfigError("model.weights", f"not a readable safetensors file ({exc})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ConfigError("model.weights", f"{p.name} does not fit the model: {detail}") from None
    return model


def input_shape_of(model: nn.Module) -> tuple[int, ...] | None:
    """The per-sample input shape a model declares (built-ins do), or None for models that do not say."""
    shape = getattr(model, "input_shape", None)
    return tuple(shape) if shape is not None else None


@torch.no_grad()
def check_fits(model: nn.Module, sample: torch.Tensor, num_classes: int) -> None:
    """Refuse data that the model cannot take, before any training: declared shape, then a real forward."""
    declared = input_shape_of(model)
    got = tuple(sample.shape[1:])
    if declared is not None and declared != got:
        raise ConfigError("model", f"expects inputs of shape (N, {', '.join(map(str, declared))}) but the data "
                                   f"has shape (N, {', '.join(map(str, got))})")
    try:
        out = model.eval()(sample)
    except Exception as exc:  # any failure here means the model does not accept this data
        raise ConfigError("model", f"forward pass on data of shape {tuple(sample.shape)} failed: "
                                   f"{str(exc).splitlines()[0]}") from None
    if out.ndim != 2 or out.shape[1] < num_classes:
        raise ConfigError("model", f"outputs shape {tuple(out.shape)} but the data has {num_classes} classes")
