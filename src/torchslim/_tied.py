"""Tied weights: one Parameter held by several layers (an output head that reuses the embedding table).

A method that replaced or reshaped one holder's weight would untie it, so the model would carry two tensors where
its author wrote one, and the file would store both. Pruning and the int8 methods leave tied weights as they are,
and say so; weight-only and k-means quantization code the weight once and let every holder decode the same codes.
"""

from __future__ import annotations

from torch import nn


def tied_weights(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """{module name: the other modules whose ``weight`` is the same Parameter}, for each module that shares it."""
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if isinstance(weight, nn.Parameter):
            holders.setdefault(id(weight), []).append(name)
    return {n: tuple(o for o in names if o != n) for names in holders.values() if len(names) > 1 for n in names}


def tied_groups(model: nn.Module) -> list[tuple[str, ...]]:
    """The holders of each tied weight, in module order (the first one leads: its codes serve the others)."""
    groups, seen = [], set()
    for name, others in tied_weights(model).items():
        if name not in seen:
            group = tuple(n for n, _ in model.named_modules() if n == name or n in others)
            groups.append(group)
            seen.update(group)
    return groups


def tied_reason(others: tuple[str, ...]) -> str:
    """Why a tied layer is left as it is."""
    return f"its weight is tied to {', '.join(others)}'s: one tensor for both"
