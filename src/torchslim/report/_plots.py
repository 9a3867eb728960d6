"""The report's plots as PNG bytes, drawn with matplotlib's object API (no pyplot global state, no display)."""

from __future__ import annotations

import importlib.util
import io
from typing import Any, Optional


def plots_available() -> bool:
    """Whether matplotlib (the ``report`` extra) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # no Software stamp: the same run gives the same bytes
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def stages_png(labels: list[str], sizes: list[int], val: list[Optional[float]], test: Optional[float],
               metric: str) -> bytes:
    """Bars: size on disk after each stage (KiB); points: the validation metric after it, and the shipped
    artifact's test metric (the metric axis starts at 0, so a small change looks small)."""
    fig = _figure(max(4.0, 1.3 * len(labels)), 3.2)
    ax = fig.subplots()
    x = list(range(len(labels)))
    ax.bar(x, [s / 1024 for s in sizes], color="#4c72b0")
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("size on disk (KiB)")
    twin = ax.twinx()
    points = [(i, v) for i, v in zip(x, val) if v is not None]
    twin.plot([p[0] for p in points], [100 * p[1] for p in points], "o-", color="#dd8452", label="validation")
    if test is not None:
        twin.plot([x[-1]], [100 * test], "s", color="#c44e52", label="test")
    twin.set_ylim(0, 105)
    twin.set_ylabel(f"{metric} (%)")
    twin.legend(fontsize=7, loc="lower left")
    ax.set_title("size and metric after each stage")
    return _png(fig)


def layers_png(names: list[str], nonzero: list[float], bits: list[Optional[int]]) -> bytes:
    """Horizontal bars: nonzero fraction of each layer's weight, labelled with its bits when quantized."""
    fig = _figure(6.0, max(2.0, 0.3 * len(names) + 1.0))
    ax = fig.subplots()
    y = list(range(len(names)))
    ax.barh(y, nonzero, color="#55a868")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()  # first layer on top
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("nonzero fraction of weights")
    for i, (f, b) in enumerate(zip(nonzero, bits)):
        ax.text(f + 0.01, i, f"{f:.3f}" + (f", {b} bits" if b is not None else ""), va="center", fontsize=7)
    ax.set_title("per-layer density and bits")
    return _png(fig)


def sensitivity_png(curves: dict[str, list[tuple[float, float]]], baseline: float, metric: str) -> bytes:
    """One line per layer: the validation metric with that layer alone pruned, against its sparsity."""
    fig = _figure(5.5, 3.5)
    ax = fig.subplots()
    for layer, points in curves.items():
        ax.plot([100 * s for s, _ in points], [100 * m for _, m in points], "o-", label=layer)
    ax.axhline(100 * baseline, color="#888", linestyle="--", linewidth=1, label="unpruned")
    ax.set_xlabel("sparsity of the layer (%)")
    ax.set_ylabel(f"validation {metric} (%)")
    ax.legend(fontsize=7)
    ax.set_title("sensitivity: one layer pruned at a time")
    return _png(fig)
