"""How sure a metric drop measured on a small validation split is: one standard error of the paired difference.

A validation split of a few hundred samples measures a drop to within several of its samples; a search that keeps
the smallest candidate whose measured drop is within the limit picks, among many, the one the split flattered most
(on the 180 validation digits, a 2-bit candidate measured at a 0.6-point drop lost 4 points on the test split). The
baseline and a candidate answer the same samples, so the uncertainty of the drop comes only from the samples on
which they disagree: with ``b`` samples only the baseline gets right and ``c`` only the candidate, the per-sample
difference has variance ``(b + c) / n - ((b - c) / n)**2`` and the drop a standard error of its square root over
``sqrt(n)``. A candidate that answers as the baseline does is measured exactly; one that gets a few samples right
and others wrong is not.

The candidates a search keeps are those whose drop the split measured within the limit, and a candidate's gains
(the ``c`` samples only it gets right) offset its losses there: among many, the kept ones are those whose gains
were luck. Over the feasible candidates of three searches on digits, the 180 validation images showed 56, 55 and
46 gains against 38, 55 and 27 losses; the 360 test images 20, 107 and 26 gains against 130, 302 and 55 losses. A
compressed model seldom beats its baseline; the search's first preference counts its losses alone
(:func:`losses_bound`), on the validation split and on the training inputs. The baseline gets nearly every
training input right, and a candidate too small to give its answers loses test samples too: over a search's 52
feasible candidates, losses on the 1,257 training digits ranked their test losses with a rank correlation of 0.75,
losses on the 180 validation digits with 0.39 (a 2-bit candidate lost none of the validation images the baseline
gets right, 29 training images and 9 test images).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset

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


def paired_counts(baseline: torch.Tensor, candidate: torch.Tensor) -> tuple[int, int]:
    """``(losses, gains)`` over the same samples (bool tensors, (N,)): how many only the baseline gets right
    (``b``), and how many only the candidate (``c``)."""
    return int((baseline & ~candidate).sum()), int((~baseline & candidate).sum())


def counts_stderr(losses: int, gains: int, n: int) -> float:
    """One standard error of the drop ``(losses - gains) / n`` measured on ``n`` paired samples."""
    if n == 0:
        return 0.0
    variance = (losses + gains) / n - ((losses - gains) / n) ** 2
    return math.sqrt(max(variance, 0.0) / n)


def losses_bound(losses: int, n: int, k: float) -> float:
    """The drop with none of the candidate's gains counted: its share of samples lost, ``losses / n``, plus ``k``
    standard errors of that share (0 for a candidate that loses none)."""
    if n == 0:
        return 0.0
    share = losses / n
    return share + k * math.sqrt(share * (1.0 - share) / n)


def _rejudged(constraints: dict[str, Any], drop: Callable[[float], float],
              value: Callable[[float], float]) -> dict[str, Any]:
    """The metric constraints judged again: ``max_metric_drop`` on ``drop(measured)``, ``min_metric`` on
    ``value(measured)``; the others as they are."""
    out = {}
    for name, c in constraints.items():
        kind = name.split(".")[0]
        if kind == "max_metric_drop":
            measured = drop(c["measured"])
            out[name] = {**c, "measured": measured, "met": measured <= c["limit"] + 1e-12}
        elif kind == "min_metric":
            measured = value(c["measured"])
            out[name] = {**c, "measured": measured, "met": measured >= c["limit"] - 1e-12}
        else:
            out[name] = c
    return out


def with_margin(constraints: dict[str, Any], stderr: float) -> dict[str, Any]:
    """The metric constraints judged with a margin against the candidate (the drop's standard error, or a
    multiple of it): ``max_metric_drop`` on ``drop + stderr``, ``min_metric`` on ``value - stderr``; the others as
    they are."""
    return _rejudged(constraints, lambda drop: drop + stderr, lambda value: value - stderr)


def on_losses(constraints: dict[str, Any], baseline_value: float, bound: float) -> dict[str, Any]:
    """The metric constraints judged on a drop of ``bound`` (:func:`losses_bound`) from ``baseline_value``:
    ``max_metric_drop`` on ``bound``, ``min_metric`` on ``baseline_value - bound``; the others as they are."""
    return _rejudged(constraints, lambda _drop: bound, lambda _value: baseline_value - bound)


TRAIN_SAMPLES = 4096  # training inputs the losses are counted on (a 0.5 % share: one standard error 0.11 %)


def training_sample(train: Dataset, size: int = TRAIN_SAMPLES) -> Dataset:
    """The training split, or ``size`` of its samples drawn by a fixed seed: the same ones for every candidate."""
    if len(train) <= size:
        return train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return Subset(train, sorted(order[:size].tolist()))


__all__ = ["TRAIN_SAMPLES", "correct_per_sample", "counts_stderr", "losses_bound", "on_losses", "paired_counts",
           "training_sample", "with_margin"]
