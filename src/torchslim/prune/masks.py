"""Unstructured magnitude masks: which weights to zero, and keeping them zero while training."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["magnitude_masks", "apply_masks_", "mask_hook"]


def _drop_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of ``scores`` (1-D) with exactly its ``k`` smallest entries False (ties broken by position)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores, stable=True)[:k]] = False
    return keep


def _scores(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # already-pruned weights rank first, so masks only grow from one schedule step to the next
    s = weight.detach().abs().flatten().float()
    return s if mask is None else s.masked_fill(~mask.flatten(), -1.0)


def magnitude_masks(weights: dict[str, torch.Tensor], counts: dict[str, int] | int,
                    previous: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks that zero the smallest-|w| weights.

    Args:
        weights: name -> weight tensor.
        counts: name -> how many weights to zero in that tensor (layer scope), or one int: how many to zero
            across all tensors together (global scope, one threshold).
        previous: masks of an earlier step; weights they zeroed are zeroed first.

    Returns:
        name -> bool tensor shaped like the weight, False where the weight is pruned.
    """
    previous = previous or {}
    if isinstance(counts, dict):
        return {n: _drop_smallest(_scores(w, previous.get(n)), counts[n]).view_as(w) for n, w in weights.items()}
    names = list(weights)
    flat = torch.cat([_scores(weights[n], previous.get(n)).cpu() for n in names])  # (total,)
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
        weight = modules[name].weight
        weight.mul_(mask.to(weight.device, weight.dtype))


def mask_hook(model: nn.Module, masks: dict[str, torch.Tensor]) -> Callable[[], None]:
    """A callable for the training loop to run after every optimizer step, so pruned weights stay exactly zero
    (momentum and weight decay would otherwise revive them).

    Example:
        >>> after_step = mask_hook(model, report.masks)  # doctest: +SKIP
        >>> optimizer.step(); after_step()  # doctest: +SKIP
    """
    def after_step() -> None:
        apply_masks_(model, masks)

    return after_step
