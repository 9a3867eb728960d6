"""Granularity value objects: which elements share one scale and zero point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from torchslim._errors import ConfigError


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One scale per slice along ``axis`` (axis 0 = output channel of Linear/Conv weights)."""

    axis: int = 0


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``size`` consecutive elements of each row (weights only)."""

    size: int

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError("group_size", f"must be a positive integer, got {self.size!r}")


Granularity = Union[PerTensor, PerChannel, PerGroup]
_KEYS: dict[type, str] = {PerTensor: "tensor", PerChannel: "channel", PerGroup: "group"}
GRANULARITY_KEYS = tuple(_KEYS.values())


def granularity_from_key(key: str | Granularity, group_size: int | None = None) -> Granularity:
    """Turn the recipe spelling (``tensor``/``channel``/``group``) into a value object.

    Args:
        key: recipe string or an existing granularity object.
        group_size: required with ``group``, rejected otherwise.
    Returns:
        PerTensor(), PerChannel() or PerGroup(group_size).
    """
    if isinstance(key, (PerTensor, PerChannel, PerGroup)):
        if group_size is not None and not isinstance(key, PerGroup):
            raise ConfigError("group_size", "only applies to granularity 'group'")
        return key
    if key == "group":
        if group_size is None:
            raise ConfigError("group_size", "required with granularity 'group'")
        return PerGroup(group_size)
    if group_size is not None:
        raise ConfigError("group_size", f"only applies to granularity 'group', not {key!r}")
    if key == "tensor":
        return PerTensor()
    if key == "channel":
        return PerChannel()
    raise ConfigError("granularity", f"must be one of {list(GRANULARITY_KEYS)}, got {key!r}")


def granularity_key(g: Granularity) -> str:
    """The recipe spelling of a granularity: ``tensor``, ``channel`` or ``group``."""
    return _KEYS[type(g)]


def granularity_to_json(g: Granularity) -> dict:
    """Full description for manifests: ``{"type": key}`` plus ``axis`` (channel) or ``size`` (group)."""
    if isinstance(g, PerChannel):
        return {"type": "channel", "axis": g.axis}
    if isinstance(g, PerGroup):
        return {"type": "group", "size": g.size}
    return {"type": granularity_key(g)}


def granularity_from_json(data: dict) -> Granularity:
    """Inverse of :func:`granularity_to_json`; ValueError for an unknown description."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "channel":
        return PerChannel(int(data.get("axis", 0)))
    if kind == "group":
        return PerGroup(int(data["size"]))
    if kind == "tensor":
        return PerTensor()
    raise ValueError(f"unknown granularity {data!r}")


def to_blocks(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """View ``x`` as (blocks, block_len): each row shares one scale and zero point.

    PerTensor -> (1, N); PerChannel(axis) -> (C, N / C); PerGroup(g) -> (rows * cols / g, g)
    where rows = x.shape[0] and cols = x[0].numel() (Conv kernels are flattened per output channel).
    """
    if isinstance(granularity, PerTensor):
        return x.reshape(1, -1)
    if isinstance(granularity, PerChannel):
        if x.dim() == 0:
            return x.reshape(1, 1)
        return x.movedim(granularity.axis, 0).reshape(x.shape[granularity.axis], -1)
    if isinstance(granularity, PerGroup):
        rows = x.shape[0] if x.dim() > 1 else 1
        cols = x.numel() // max(rows, 1)
        if cols % granularity.size:
            raise ConfigError(
                "group_size", f"must divide the row length {cols} of a tensor of shape {tuple(x.shape)}, "
                f"got {granularity.size}")
        return x.reshape(-1, granularity.size)
    raise TypeError(f"unknown granularity {granularity!r}")


def from_blocks(blocks: torch.Tensor, shape: torch.Size, granularity: Granularity) -> torch.Tensor:
    """Inverse of :func:`to_blocks`: (blocks, block_len) back to ``shape``."""
    if isinstance(granularity, PerChannel) and len(shape) > 0:
        moved = list(shape)
        moved.insert(0, moved.pop(granularity.axis))
        return blocks.reshape(moved).movedim(0, granularity.axis)
    return blocks.reshape(shape)
