"""Rebuild pruned shapes: make a freshly built model accept a pruned model's state_dict."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from torchslim.prune.attention import PrunableMultiheadAttention, replace_attention_

__all__ = ["resize_to_state_dict_"]


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _convert_pruned_attention(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Swap in PrunableMultiheadAttention wherever the state_dict has fewer heads than the nn.MultiheadAttention."""

    def pruned(name: str, mha: nn.MultiheadAttention) -> bool:
        w = state_dict.get(f"{name}.in_proj_weight")
        return w is not None and w.shape != mha.in_proj_weight.shape

    return replace_attention_(model, pruned)


def _set_shapes(module: nn.Module) -> None:
    """Update a module's size attributes from its (already replaced) tensors."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        w = module.weight
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:  # depthwise
            module.groups = w.shape[1] * w.shape[0] if module.transposed else w.shape[0]
        if module.transposed:  # (in, out / groups, *k)
            module.in_channels, module.out_channels = w.shape[0], w.shape[1] * module.groups
        else:  # (out, in / groups, *k)
            module.out_channels, module.in_channels = w.shape[0], w.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = (module.weight if module.weight is not None else module.running_mean).shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.weight.shape[0]
    elif isinstance(module, PrunableMultiheadAttention):
        module.num_heads = module.in_proj_weight.shape[0] // (3 * module.head_dim)
    elif isinstance(module, nn.PReLU):  # one slope per channel
        module.num_parameters = module.weight.numel()
    elif isinstance(module, nn.Embedding):  # its columns go when they are added to pruned channels
        module.num_embeddings, module.embedding_dim = module.weight.shape
    elif type(module).__module__.startswith("torch."):  # a torch layer with size attributes not handled here
        raise ValueError(f"cannot resize a {type(module).__name__}")
    # else a module of the user's own whose parameters were cut with the channels they scale (a layer scale, learned
    # positions): the pruned model computed with just these tensors, and so does the resized one


@torch.no_grad()
def resize_to_state_dict_(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Reshape a freshly built (unpruned) model, in place, so that ``model.load_state_dict(state_dict)``
    succeeds and the loaded model computes what the pruned model did.

    Linear, ConvNd, BatchNorm, LayerNorm, GroupNorm, PReLU and Embedding get new parameter/buffer shapes and size
    attributes, a module of the user's own new shapes for its own parameters; an ``nn.MultiheadAttention`` whose
    heads were pruned becomes a :class:`PrunableMultiheadAttention` with fewer heads. Values are left
    uninitialised: load the state_dict next.

    Args:
        model: a model built as the pruned one was, before pruning.
        state_dict: the pruned model's state_dict (e.g. read from safetensors).

    Returns:
        names of the modules resized or replaced.
    """
    changed = _convert_pruned_attention(model, state_dict)
    for name, module in model.named_modules():
        tensors = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        resized = False
        for tname, t in tensors.items():
            if t is None:
                continue
            new = state_dict.get(_key(name, tname))
            if new is None or new.shape == t.shape:
                continue
            empty = torch.empty(new.shape, dtype=t.dtype, device=t.device)
            setattr(module, tname, nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty)
            resized = True
        if resized:
            _set_shapes(module)
            if name not in changed:
                changed.append(name)
    return changed
