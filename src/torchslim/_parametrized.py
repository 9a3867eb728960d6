"""Reparametrized weights (``weight_norm``, ``spectral_norm``, any ``torch.nn.utils.parametrize``) baked into plain
ones before compression.

A parametrized layer computes its weight from other tensors on every call (``g * v / |v|``), so a method that
masks, cuts or replaces the weight would act on a value the next call recomputes. The function is unchanged by
baking; the model records which weights were baked so that its artifact rebuilds the same plain layers from the
architecture (:func:`rebake_`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

_BAKED = "_torchslim_baked_weights"  # attribute of the root module: ["layer.weight", ...] baked so far


def _weight_norm_hook(module: nn.Module):
    """The hook of the older ``torch.nn.utils.weight_norm`` on ``module``, or None."""
    from torch.nn.utils.weight_norm import WeightNorm

    return next((h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm)), None)


def _bake(module: nn.Module, tensor: str) -> None:
    if parametrize.is_parametrized(module, tensor):
        # torch removes the tensor's property from the module's generated class, which a deep copy of the module
        # (the run's baseline) shares: the module gets a class of its own first
        cls = module.__class__
        own = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        module.__class__ = type(cls.__name__, cls.__bases__, own)
        parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
        if tensor in module._buffers:  # (several originals, as weight_norm's, leave a buffer: a weight trains)
            module.register_parameter(tensor, nn.Parameter(module._buffers.pop(tensor)))
        return
    hook = _weight_norm_hook(module)
    if hook is None or hook.name != tensor:
        raise ValueError(f"no parametrized {tensor!r} to bake")
    torch.nn.utils.remove_weight_norm(module, tensor)


def bake_parametrizations_(model: nn.Module) -> list[str]:
    """Replace, in place, every parametrized tensor of ``model`` by a plain Parameter of its current value.

    Returns:
        ``["layer.weight", ...]``: the tensors baked by this call (all that the model records are in
        :func:`baked_weights`).
    """
    found = []
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if parametrize.is_parametrized(module):
                tensors = list(module.parametrizations.keys())
            else:
                hook = _weight_norm_hook(module)
                tensors = [hook.name] if hook is not None else []
            for tensor in tensors:
                _bake(module, tensor)
                found.append(f"{name}.{tensor}" if name else tensor)
    if found:
        setattr(model, _BAKED, baked_weights(model) + found)
    return found


def baked_weights(model: nn.Module) -> list[str]:
    """The tensors of ``model`` that :func:`bake_parametrizations_` made plain, for the artifact to record."""
    return list(getattr(model, _BAKED, []))


def rebake_(model: nn.Module, names: list[str]) -> None:
    """Bake the recorded tensors of a freshly built ``model`` (their values are loaded next)."""
    for full in names:
        owner, _, tensor = full.rpartition(".")
        try:
            module = model.get_submodule(owner)
        except AttributeError:
            raise ValueError(f"no module {owner!r} with a parametrized {tensor!r} in the built model") from None
        try:
            with torch.no_grad():
                _bake(module, tensor)
        except ValueError:
            raise ValueError(f"{full} is not parametrized in the built model") from None
    if names:
        setattr(model, _BAKED, baked_weights(model) + list(names))
