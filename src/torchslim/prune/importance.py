"""Importance policy: one score per unit, lower = removed first.

Channel groups use torch-pruning's group importances (the score of a channel sums over every coupled layer, then
averages); heads use the same rule over a head's q/k/v rows and ``out_proj`` columns.
"""

from __future__ import annotations

import torch
import torch_pruning as tp

from torchslim.prune.attention import PrunableMultiheadAttention
from torchslim.prune.graph import ChannelUnit


def channel_scores(kind: str, unit: ChannelUnit, activations: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Scores of ``unit``'s channels, (size,).

    Args:
        kind: ``l1`` | ``l2`` (norm of the coupled weights) | ``taylor`` (|w·∂L/∂w|; gradients must be filled) |
            ``activation`` (mean |activation| of the producing layers) | ``output_taylor`` (mean |∂L/∂mask| of
            the producers' outputs, from :func:`torchslim.prune.calibration.output_taylor`).
        activations: producer name -> (C,) per-channel measure, for ``activation`` and ``output_taylor``.
    """
    if kind in ("l1", "l2"):
        return tp.importance.GroupMagnitudeImportance(p=int(kind[1]), normalizer=None)(unit.group).cpu()
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance(normalizer=None)(unit.group).cpu()
    if kind == "activation":
        return producer_activation(unit, activations, normalise=False, reduce="mean")
    if kind == "output_taylor":  # masking a coupled channel masks it in every producer: the estimates add up
        return producer_activation(unit, activations, normalise=False, reduce="sum")
    raise ValueError(f"unknown importance {kind!r}")


def producer_activation(unit: ChannelUnit, activations: dict[str, torch.Tensor], normalise: bool,
                        reduce: str) -> torch.Tensor:
    """Per root channel, the activations of every producing layer, optionally divided by each layer's largest,
    combined by ``mean`` or ``max``."""
    producers = {n for n, _ in unit.producers}
    names = {m: n for n, m in unit.producers}
    per_layer = []
    for item in unit.group:
        name = names.get(item.dep.target.module)
        if name not in producers or name not in activations or any(r is None for r in item.root_idxs):
            continue
        a = activations[name].cpu()[item.idxs]
        if normalise:
            top = activations[name].max().cpu()
            a = a / top if top > 0 else torch.zeros_like(a)
        full = torch.zeros(unit.size)
        full[item.root_idxs] = a
        per_layer.append(full)
        producers.discard(name)
    stacked = torch.stack(per_layer)  # (layers, size)
    if reduce == "sum":
        return stacked.sum(0)
    return stacked.max(0).values if reduce == "max" else stacked.mean(0)


def head_scores(kind: str, attn: PrunableMultiheadAttention, activation: torch.Tensor | None = None) -> torch.Tensor:
    """Scores of ``attn``'s heads, (num_heads,).

    Args:
        kind: as for :func:`channel_scores`.
        activation: (num_heads * head_dim,) mean |input of out_proj|, for ``activation``; (num_heads,) mean
            |∂L/∂mask| of each head's output, for ``output_taylor``.
    """
    h, hd = attn.num_heads, attn.head_dim
    if kind == "activation":
        return activation.cpu().view(h, hd).mean(1)
    if kind == "output_taylor":
        return activation.cpu().view(h)

    def per_head(w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        # w_in: (3 * H * hd, E) rows q|k|v; w_out: (E, H * hd)
        rows = w_in.view(3, h, hd, -1).permute(1, 0, 2, 3).reshape(h, -1)
        cols = w_out.t().reshape(h, -1)
        return (rows.sum(1) + cols.sum(1)).cpu()

    w_in, w_out = attn.in_proj_weight.detach(), attn.out_proj.weight.detach()
    if kind in ("l1", "l2"):
        p = int(kind[1])
        return per_head(w_in.abs().pow(p), w_out.abs().pow(p))
    if kind == "taylor":
        return per_head((w_in * attn.in_proj_weight.grad).abs(), (w_out * attn.out_proj.weight.grad).abs())
    raise ValueError(f"unknown importance {kind!r}")
