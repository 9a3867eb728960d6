"""Unstructured magnitude masks: which weights to zero, and keeping them zero while training."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from torchslim._recurrent import is_recurrent, recurrent_weights

__all__ = ["magnitude_masks", "apply_masks_", "mask_hook", "masked_weight"]


def _matrices(module: nn.Module) -> list[torch.Tensor] | None:
    """A recurrent layer's weight matrices, which one mask covers together; None for a layer with one weight."""
    return list(recurrent_weights(module).values()) if is_recurrent(module) else None


def masked_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer's mask is shaped like: its ``weight``, or a recurrent layer's matrices flattened and
    joined (a copy: read it, never write to it)."""
    matrices = _matrices(module)
    return module.weight if matrices is None else torch.cat([m.detach().flatten() for m in matrices])


@torch.no_grad()
def _fill_masked_(module: nn.Module, weight: torch.Tensor, pruned: torch.Tensor) -> None:
    """Zero ``weight`` where ``pruned`` (its complement mask) is True; for a recurrent layer, each of its matrices
    where its part of the joined mask is (``weight`` unused)."""
    matrices = _matrices(module)
    if matrices is None:
        weight.masked_fill_(pruned, 0.0)  # +0.0 (a product with 0 keeps the sign: -0.0)
        return
    for matrix, part in zip(matrices, torch.split(pruned, [m.numel() for m in matrices])):
        matrix.masked_fill_(part.view_as(matrix), 0.0)


def _drop_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of ``scores`` (1-D) with exactly its ``k`` smallest entries False (ties broken by position)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores, stable=True)[:k]] = False
    return keep


def _scores(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # already-pruned weights rank first, so masks only grow from one schedule step to the next
    s = weight.detach().abs().flatten().float()
    return s if mask is None else s.masked_fill(~mask.flatten().to(s.device), -1.0)


def _lamp_scores(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """LAMP scores (Lee et al., "Layer-adaptive sparsity for the magnitude-based pruning", ICLR 2021): w² over the
    sum of w² of the weights of the same tensor at least as large (ties by position). Why: a global |w| threshold
    follows each layer's scale (a wide conv followed by BatchNorm can lose every weight); these scores are
    invariant to it, the tensor's largest weight scores 1, and their global ranking minimises a bound on the
    output's distortion."""
    squared = weight.detach().flatten().float() ** 2
    order = torch.argsort(squared, stable=True)
    ranked = squared[order]
    at_least = torch.flip(torch.cumsum(torch.flip(ranked, [0]), 0), [0])  # sum of the ranked weights from i on
    scores = torch.empty_like(squared)
    scores[order] = ranked / at_least.clamp_min(torch.finfo(torch.float32).tiny)
    return scores if mask is None else scores.masked_fill(~mask.flatten().to(scores.device), -1.0)


def magnitude_masks(weights: dict[str, torch.Tensor], counts: dict[str, int] | int,
                    previous: dict[str, torch.Tensor] | None = None, *, lamp: bool = False
                    ) -> dict[str, torch.Tensor]:
    """Keep-masks that zero the smallest-|w| weights.

    Args:
        weights: name -> weight tensor.
        counts: name -> how many weights to zero in that tensor (layer scope), or one int: how many to zero
            across all tensors together (global scope, one threshold).
        previous: masks of an earlier step; weights they zeroed are zeroed first.
        lamp: rank by :func:`_lamp_scores` instead of |w| (the same order within a tensor; across tensors, the
            ``lamp`` scope).

    Returns:
        name -> bool tensor shaped like the weight, False where the weight is pruned.
    """
    previous = previous or {}
    score = _lamp_scores if lamp else _scores
    if isinstance(counts, dict):
        return {n: _drop_smallest(score(w, previous.get(n)), counts[n]).view_as(w) for n, w in weights.items()}
    names = list(weights)
    flat = torch.cat([score(weights[n], previous.get(n)).cpu() for n in names])  # (total,)
    keep = _drop_smallest(flat, counts)
    out, start = {}, 0
    for n in names:
        w = weights[n]
        out[n] = keep[start:start + w.numel()].view_as(w).to(w.device)
        start += w.numel()
    return out


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights of ``model`` in place.

    Args:
        model: the model the masks were computed for.
        masks: module name -> bool keep-mask of that module's ``weight``.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        weight = masked_weight(modules[name])
        _fill_masked_(modules[name], weight, ~mask.to(weight.device, torch.bool))  # +0.0, as an artifact restores it


def mask_hook(model: nn.Module | Callable[[], nn.Module], masks: dict[str, torch.Tensor],
              log: Callable[[str], None] | None = None) -> Callable[[], None]:
    """A callable for the training loop to run after every optimizer step, so pruned weights stay exactly zero
    (momentum and weight decay would otherwise revive them).

    Layers are looked up by name at every call, so the masks follow a model that is reloaded or replaced when
    ``model`` is a getter (e.g. ``lambda: ctx.model``). A layer that is gone, has no weight tensor or has a
    weight of another shape (replaced by a later stage) is skipped, and said once through ``log``.

    Args:
        model: the pruned model, or a function returning the model to keep masked now.
        masks: module name -> bool keep-mask of that module's ``weight``; read at every call, so masks added or
            replaced later (a schedule's next step) apply from the next call.
        log: where a skipped layer is reported; a warning of this module's logger when None.

    Example:
        >>> after_step = mask_hook(model, report.masks)  # doctest: +SKIP
        >>> optimizer.step(); after_step()  # doctest: +SKIP
    """
    current = (lambda: model) if isinstance(model, nn.Module) else model
    say = log or logging.getLogger(__name__).warning
    cast: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (mask given, its complement on the device)
    skipped: set[str] = set()

    @torch.no_grad()
    def after_step() -> None:
        modules = dict(current().named_modules())
        for name, mask in masks.items():
            module = modules.get(name)
            source = getattr(module, "weight_source", None)  # a quantized layer: its weight is decoded
            if getattr(module, "weight_sources", None) is not None or (
                    source is not None and not isinstance(getattr(source, "weight", None), torch.Tensor)):
                continue  # integer codes or a codebook: zeros stay code zero / centroid 0, nothing trains them
            if is_recurrent(module):  # sized and placed by its matrices: no joined copy every step
                matrices = _matrices(module)
                weight, shape = matrices[0], torch.Size([sum(m.numel() for m in matrices)])
            else:
                weight = getattr(source if source is not None else module, "weight", None)  # QAT: the float weight
                shape = getattr(weight, "shape", None)
            if not isinstance(weight, torch.Tensor) or shape != mask.shape:
                if name not in skipped:
                    skipped.add(name)
                    say(f"pruning mask of {name!r} no longer applies (the layer is gone or was replaced); "
                        f"its weights are no longer kept at zero")
                continue
            entry = cast.get(name)
            if entry is None or entry[0] is not mask or entry[1].device != weight.device:
                entry = cast[name] = (mask, ~mask.to(weight.device, torch.bool))
            _fill_masked_(module, weight, entry[1])

    return after_step
