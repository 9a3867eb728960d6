"""How sure a metric drop measured on a small validation split is: one standard error of the paired difference.

A validation split of a few hundred samples measures a drop to within several of its samples; a search that keeps
the smallest candidate whose measured drop is within the limit picks, among many, the one the split flattered most
(on the 180 validation digits, a 2-bit candidate measured at a 0.6-point drop lost 4 points on the test split). The
baseline and a candidate answer the same samples, so the uncertainty of the drop comes only from the samples on
which they disagree: with ``b`` samples only the baseline gets right and ``c`` only the candidate, the per-sample
difference has variance ``(b + c) / n - ((b - c) / n)**2`` and the drop a standard error of its square root over
``sqrt(n)``. A candidate that answers as the baseline does is measured exactly; one that gets a few samples right
and others wrong is not.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from torchslim.evaluate import top_classes


@torch.no_grad()
def correct_per_sample(predict: Any, data: Dataset, metric: str) -> torch.Tensor:
    """(N,) bool: whether ``predict`` (inputs → logits: a module or an ONNX Runtime session) gets each sample right
    (``accuracy``: the top class; ``top5``: among the top five)."""
    if isinstance(predict, torch.nn.Module):
        predict.eval()
    k = 5 if metric == "top5" else 1
    out = []
    for x, y in DataLoader(data, batch_size=256):
        logits = predict(x).float().cpu()  # (B, classes)
        top = top_classes(logits, k)  # (B, k)
        out.append((top == y[:, None]).any(dim=1))
    return torch.cat(out)


def paired_drop_stderr(baseline: torch.Tensor, candidate: torch.Tensor) -> float:
    """One standard error of ``mean(baseline) - mean(candidate)`` over the same samples (bool tensors, (N,))."""
    n = len(baseline)
    if n == 0:
        return 0.0
    only_base = int((baseline & ~candidate).sum())  # b
    only_cand = int((~baseline & candidate).sum())  # c
    variance = (only_base + only_cand) / n - ((only_base - only_cand) / n) ** 2
    return math.sqrt(max(variance, 0.0) / n)


def with_margin(constraints: dict[str, Any], stderr: float) -> dict[str, Any]:
    """The metric constraints judged with a margin against the candidate (the drop's standard error, or a
    multiple of it): ``max_metric_drop`` on ``drop + stderr``, ``min_metric`` on ``value - stderr``; the others as
    they are."""
    out = {}
    for name, c in constraints.items():
        kind = name.split(".")[0]
        if kind == "max_metric_drop":
            measured = c["measured"] + stderr
            out[name] = {**c, "measured": measured, "met": measured <= c["limit"] + 1e-12}
        elif kind == "min_metric":
            measured = c["measured"] - stderr
            out[name] = {**c, "measured": measured, "met": measured >= c["limit"] - 1e-12}
        else:
            out[name] = c
    return out


__all__ = ["correct_per_sample", "paired_drop_stderr", "with_margin"]
