"""Which layers a method touches: Linear/Conv modules, minus ``ignore``, with per-layer bits."""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from torch import nn

from torchslim._errors import ConfigError

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def name_matches(name: str, pattern: str) -> bool:
    """Exact module name, or ``re:REGEX`` that must match the whole name."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern


def quantizable_layers(model: nn.Module, ignore: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Linear/Conv1d/Conv2d modules by qualified name, skipping those matched by ``ignore``."""
    ignore = tuple(ignore)
    return {name: m for name, m in model.named_modules()
            if isinstance(m, QUANTIZABLE) and not any(name_matches(name, p) for p in ignore)}


def layer_bits(model: nn.Module, layers: Mapping[str, nn.Module], bits: int, overrides: Mapping[str, int]
               ) -> dict[str, int]:
    """Bits for each of ``layers``: ``overrides`` by exact name, else ``bits``.

    An override naming no Linear/Conv layer of ``model`` is an error; one naming an ignored layer is unused.
    """
    known = {name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)} | set(layers)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError("overrides", f"no quantizable layer named {unknown}; layers: {sorted(known)}")
    return {name: overrides.get(name, bits) for name in layers}


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
