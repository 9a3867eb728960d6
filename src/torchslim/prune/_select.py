"""Which layers a config touches: ``ignore`` and ``overrides`` resolved against a model's module names."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from torch import nn

from torchslim._errors import ConfigError


def count(fraction: float, total: int) -> int:
    """How many of ``total`` units a sparsity removes: round half up, so 0.5 of 3 is 2 and 0.9 of 100 is 90."""
    return min(total, int(math.floor(fraction * total + 0.5 + 1e-9)))


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return pattern == name


def _lineage(name: str) -> list[str]:
    """``a.b.c`` -> [``a.b.c``, ``a.b``, ``a``]: a layer, then its enclosing modules, nearest first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def check_names(model: nn.Module, ignore: Iterable[str], overrides: Mapping[str, float]) -> None:
    """Raise ConfigError (field ``ignore[i]`` or ``overrides.NAME``) for a pattern matching no module of ``model``."""
    names = [n for n, _ in model.named_modules() if n]
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    for i, pattern in enumerate(ignore):
        if not any(_matches(pattern, n) for n in names):
            raise ConfigError(f"ignore[{i}]", f"{pattern!r} matches no module of the model (modules: {shown})")
    for pattern in overrides:
        if not any(_matches(pattern, n) for n in names):
            raise ConfigError(f"overrides.{pattern}", f"matches no module of the model (modules: {shown})")


class LayerSelector:
    """Resolves a config's ``ignore`` list and ``overrides`` mapping for one model.

    A pattern applies to the module it names and to everything inside it, so ignoring ``encoder.layers.0``
    keeps the heads and FFN neurons of that block. Every pattern must match at least one module name.

    Args:
        model: the model whose ``named_modules`` names are matched.
        sparsity: the config's default sparsity.
        ignore: names / ``re:`` patterns.
        overrides: name / ``re:`` pattern -> sparsity.
    """

    def __init__(self, model: nn.Module, sparsity: float, ignore: Iterable[str] = (),
                 overrides: Mapping[str, float] | None = None):
        self.sparsity = sparsity
        self.ignore = tuple(ignore)
        # exact names win over patterns; among patterns the first listed wins
        items = list((overrides or {}).items())
        self.overrides = [kv for kv in items if not kv[0].startswith("re:")] + \
                         [kv for kv in items if kv[0].startswith("re:")]
        check_names(model, self.ignore, dict(items))

    def is_ignored(self, name: str) -> bool:
        """Whether ``name`` or a module enclosing it is ignored."""
        return any(_matches(p, n) for n in _lineage(name) for p in self.ignore)

    def override_for(self, name: str) -> tuple[str, float] | None:
        """(pattern, sparsity) of the override nearest to ``name``, or None."""
        for n in _lineage(name):
            for pattern, value in self.overrides:
                if _matches(pattern, n):
                    return pattern, value
        return None

    def sparsity_for(self, name: str) -> float:
        """Target sparsity of layer ``name``: its override, else the config's sparsity."""
        hit = self.override_for(name)
        return self.sparsity if hit is None else hit[1]

    def field_for(self, name: str) -> str:
        """The config key that set ``name``'s sparsity, for error messages."""
        hit = self.override_for(name)
        return "sparsity" if hit is None else f"overrides.{hit[0]}"
