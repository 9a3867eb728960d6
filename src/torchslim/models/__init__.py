"""Model building: built-in reference models and user factories (``pkg.mod:fn`` + safetensors weights)."""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._errors import ConfigError, brief, did_you_mean
from torchslim._validation import finite_float
from torchslim._yaml import file_problem
from torchslim.models._reference import BUILTIN_MODELS, MLP, LeNet5, LeNet300100, MNIST1DCNN, MNIST1DMLP

__all__ = ["BUILTIN_MODELS", "DATA_KWARGS", "MLP", "build_model", "data_kwargs_asked", "input_shape_of",
           "load_weights_", "LeNet300100", "LeNet5", "MNIST1DCNN", "MNIST1DMLP", "with_data_kwargs"]

DATA_KWARGS = ("input_shape", "num_classes")  # filled in from the data when a constructor asks for them


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
    finally:
        sys.path[:] = saved
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError("model.factory", f"module {module_name!r} has no callable {fn_name!r}")
    return fn


MAX_PARAMS = 2**30  # 4 GiB of fp32 weights: a larger model is refused before any memory is allocated


def _call(ctor: Any, kwargs: dict[str, Any], field: str) -> Any:
    """``ctor(**kwargs)``; whatever it raises (it may be user code) is a ConfigError naming ``field``."""
    try:
        return ctor(**kwargs)
    except ConfigError:
        raise
    except SystemExit as exc:
        raise ConfigError(field, f"building the model called exit({exc.code!r})") from None
    except RecursionError:
        raise ConfigError(field, "building the model recursed without end") from None
    except Exception as exc:  # TypeError, ValueError, OverflowError, RuntimeError from torch, the user's own
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(field, f"building the model failed: {type(exc).__name__}"
                                 f"{': ' + detail if detail else ''}") from None


def _check_size(ctor: Any, kwargs: dict[str, Any], field: str) -> None:
    """Build on the ``meta`` device (shapes, no memory) and refuse more than MAX_PARAMS parameters.

    A constructor that cannot run on ``meta`` is left to the real build.
    """
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the real build says the same once
            probe = ctor(**kwargs)
    except (Exception, SystemExit):  # the real build reports the error, or succeeds where meta could not
        return
    if isinstance(probe, nn.Module):
        count = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
        if count > MAX_PARAMS:
            raise ConfigError(field, f"would build a model of {count:,} parameters and buffers; at most "
                                     f"{MAX_PARAMS:,} are allowed")


def data_kwargs_asked(spec: Any, base_dir: str | Path = ".", *, required: bool = False) -> set[str]:
    """Which of ``input_shape`` / ``num_classes`` the spec's constructor takes and its kwargs do not give (with
    ``required``: only those without a default)."""
    if spec.name is not None:
        if spec.name not in BUILTIN_MODELS:
            return set()
        ctor = BUILTIN_MODELS[spec.name]
    else:
        try:
            ctor = _factory(spec.factory, base_dir)
        except (Exception, SystemExit):  # noqa: BLE001  (build_model reports whatever importing it raised)
            return set()
    try:
        params = inspect.signature(ctor).parameters
    except (TypeError, ValueError):
        return set()
    return {name for name in DATA_KWARGS if name in params and name not in spec.kwargs
            and not (required and params[name].default is not inspect.Parameter.empty)}


def with_data_kwargs(spec: Any, base_dir: str | Path, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The spec with ``input_shape`` and ``num_classes`` from the data added to its kwargs where its constructor
    asks for them and they are not given (so the artifact records, and rebuilds, the same model)."""
    values = {"input_shape": list(input_shape), "num_classes": int(num_classes)}
    asked = data_kwargs_asked(spec, base_dir)
    if not asked:
        return spec
    return spec.model_copy(update={"kwargs": {**spec.kwargs, **{k: values[k] for k in sorted(asked)}}})


def build_model(spec: Any, base_dir: str | Path = ".") -> nn.Module:
    """Build the (untrained or weight-loaded) model a :class:`~torchslim.domain.ModelSpec` describes.

    The constructor runs twice: first on the ``meta`` device, where no memory is allocated, so that kwargs asking
    for terabytes of weights are refused (see ``MAX_PARAMS``), then for real. Anything it raises is a ConfigError.

    Args:
        spec: a ``ModelSpec`` (``name`` or ``factory``, ``kwargs``, optional ``weights``).
        base_dir: folder that a relative ``weights`` path and factory module resolve against.
    Returns:
        the model in eval mode, on the CPU.
    """
    if spec.name is not None:
        if spec.name not in BUILTIN_MODELS:
            raise ConfigError("model.name", f"unknown model {brief(spec.name)}; {did_you_mean(spec.name, BUILTIN_MODELS)}"
                                             f"known: {', '.join(BUILTIN_MODELS)}")
        ctor = BUILTIN_MODELS[spec.name]
        field = "model.kwargs"
    else:
        try:
            ctor, field = _factory(spec.factory, base_dir), "model.kwargs"
        except ConfigError:
            raise
        except (Exception, SystemExit) as exc:  # importing runs the module: any error is the module's
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError("model.factory", f"importing {brief(spec.factory)} failed: {type(exc).__name__}"
                                               f"{': ' + detail if detail else ''}") from None
    try:
        inspect.signature(ctor).bind(**spec.kwargs)
    except TypeError as exc:
        raise ConfigError(field, f"{exc}") from None
    except ValueError:  # builtins without a signature: let the call decide
        pass
    if spec.name is not None:
        _check_builtin_sizes(ctor, spec.kwargs)
    _check_data_kwargs(spec.kwargs)
    _check_size(ctor, spec.kwargs, field)
    model = _call(ctor, spec.kwargs, field)
    if not isinstance(model, nn.Module):
        raise ConfigError("model.factory", f"must return a torch.nn.Module, got {type(model).__name__}")
    if spec.weights is not None:
        load_weights_(model, Path(base_dir) / spec.weights if not Path(spec.weights).is_absolute() else spec.weights)
    return model.eval()


def _check_builtin_sizes(ctor: Any, kwargs: dict[str, Any]) -> None:
    """A built-in model's sizes (an integer default) must be positive integers and its ``width`` (a float
    default) a positive finite number: width 0 would build one unit per layer, and true/false is no size."""
    for name, param in inspect.signature(ctor).parameters.items():
        if name not in kwargs or isinstance(param.default, bool):
            continue
        value = kwargs[name]
        if isinstance(param.default, int) and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"model.kwargs.{name}", f"must be a positive integer, got {brief(value)}")
        number = finite_float(value)
        if isinstance(param.default, float) and (number is None or number <= 0):
            raise ConfigError(f"model.kwargs.{name}", f"must be a positive number, got {brief(value)}")


def _check_data_kwargs(kwargs: dict[str, Any]) -> None:
    """``num_classes`` and a list ``input_shape``, given by hand, must be what the data's would be: a positive class
    count and positive sizes (a factory built with ``num_classes: 0`` makes zero-width layers, and torch only
    warns). ``null`` is left to the factory, as is an ``input_shape`` that is not a list."""
    value = kwargs.get("num_classes")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError("model.kwargs.num_classes", f"must be a positive integer, got {brief(value)}")
    shape = kwargs.get("input_shape")
    if isinstance(shape, (list, tuple)) and (not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0
                                                              for d in shape)):
        raise ConfigError("model.kwargs.input_shape", f"must be a list of positive integers, got {brief(shape)}")


def load_weights_(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors state dict into ``model``; mismatched keys or shapes are a ConfigError."""
    from safetensors.torch import load_file

    p = Path(path)
    problem = file_problem(p)
    if problem:
        raise ConfigError("model.weights", f"{problem}: {p}" if problem == "file not found" else f"{p}: {problem}")
    try:
        state = load_file(str(p))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ConfigError("model.weights", f"not a readable safetensors file ({exc})") from None
    for key, tensor in state.items():  # a diverged training run saves NaNs; nothing trained on them is meaningful
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConfigError("model.weights", f"{p.name}: tensor {brief(key)} holds NaN or infinite values")
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


def _channels_last_hint(shape: tuple[int, ...], declared: tuple[int, ...] | None = None) -> str:
    """A hint when (N, H, W, C) images meet a model that takes (N, C, H, W) (numpy, PIL and TensorFlow order)."""
    if len(shape) != 4:
        return ""
    _, h, w, c = shape
    looks = declared == (c, h, w) if declared is not None else (c in (1, 3, 4) and h not in (1, 3, 4))
    if not looks:
        return ""
    return (f" (the samples look channels-last, (H, W, C) = ({h}, {w}, {c}): store x as (N, C, H, W), e.g. "
            f"np.transpose(x, (0, 3, 1, 2)))")


@torch.no_grad()
def check_fits(model: nn.Module, sample: torch.Tensor, num_classes: int) -> list[str]:
    """Refuse data that the model cannot take, before any training: declared shape, then a real forward.

    Returns:
        warnings about outputs that fit but will not train as the user expects (see :func:`output_warnings`).
    """
    declared = input_shape_of(model)
    got = tuple(sample.shape[1:])
    if declared is not None and declared != got:
        raise ConfigError("model", f"expects inputs of shape (N, {', '.join(map(str, declared))}) but the data "
                                   f"has shape (N, {', '.join(map(str, got))})"
                                   f"{_channels_last_hint(tuple(sample.shape), declared)}")
    try:
        out = model.eval()(sample)
    except Exception as exc:  # any failure here means the model does not accept this data
        first = str(exc).splitlines()[0]
        if "'indices'" in first and sample.dtype.is_floating_point:  # torch's own words run past one line
            first = ("an embedding was given float ids: inputs arrive as float32 (an npz's integers too, exactly); "
                     "cast them in forward, e.g. self.embed(x.long())")
        hint = _channels_last_hint(tuple(sample.shape))  # before torch's words, which may be cut to fit the line
        raise ConfigError("model", f"forward pass on data of shape {tuple(sample.shape)} failed{hint}: "
                                   f"{first}") from None
    if not isinstance(out, torch.Tensor):
        hint = ""
        if isinstance(out, (dict, tuple, list)):  # HF-style outputs, (logits, features) pairs
            hint = ("; let the factory return a wrapper whose forward returns the logits alone, e.g. "
                    "model(x)['logits'] or model(x)[0]")
        raise ConfigError("model", f"must return one tensor of logits (N, classes); it returned a "
                                   f"{type(out).__name__}{hint}")
    if out.ndim != 2 or out.shape[1] < num_classes:
        raise ConfigError("model", f"outputs shape {tuple(out.shape)} but the data has {num_classes} classes")
    return output_warnings(out, num_classes)


def output_warnings(out: torch.Tensor, num_classes: int) -> list[str]:
    """What is odd about a model's (N, K) outputs that still fit the data: scores for classes the data does not
    have (never right, yet counted when highest), and probabilities where logits are expected (a trailing
    Softmax: cross-entropy and distillation apply their own softmax, so the gradients all but vanish)."""
    warnings = []
    if out.shape[1] > num_classes:
        warnings.append(f"the model outputs {out.shape[1]} scores per sample but the data has {num_classes} "
                        f"classes: a sample whose highest score is one of the last {out.shape[1] - num_classes} "
                        f"counts as wrong")
    if len(out) and bool((out >= 0).all()) and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-4):
        warnings.append("the model's outputs look like probabilities (each row is non-negative and sums to 1): "
                        "training and distillation treat them as logits and apply their own softmax, so they "
                        "learn slowly if at all; end the model on its last Linear layer instead of a Softmax")
    return warnings
