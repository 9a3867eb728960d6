"""Self-attention whose projections are ``nn.Linear`` modules, so every quantization method reaches them.

``nn.MultiheadAttention`` keeps its in-projection as a bare parameter (``in_proj_weight``) and calls its
``out_proj`` through a functional kernel: neither is a module call, so the quantized layers cannot replace the
in-projection and calibration hooks never see either. :class:`ProjectedMultiheadAttention` computes the same
function with ``in_proj`` and ``out_proj`` as ordinary Linear modules. A model is converted before it is
quantized (and its artifact records where), and a deployed model is converted back to ``nn.MultiheadAttention``
where the shapes allow, so it runs torch's fused attention again.
"""

from __future__ import annotations

import torch
from torch import nn

from torchslim.prune.attention import PrunableMultiheadAttention, is_convertible, multihead_forward

__all__ = ["ProjectedMultiheadAttention", "project_attention_", "unproject_attention_"]


class ProjectedMultiheadAttention(nn.Module):
    """Self-attention with ``in_proj`` (E → 3·H·d) and ``out_proj`` (H·d → E) as ``nn.Linear`` modules.

    Same call convention and outputs as ``nn.MultiheadAttention`` (and :class:`PrunableMultiheadAttention`, whose
    pruned inner width ``H·d`` it keeps).
    """

    # nn.TransformerEncoderLayer reads these: False keeps it off the fused kernel, which needs in_proj_weight.
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.in_proj = nn.Linear(embed_dim, 3 * inner, bias=bias)  # rows: [q heads | k heads | v heads]
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias

    @classmethod
    def from_attention(cls, attn: nn.Module) -> "ProjectedMultiheadAttention":
        """The same attention as a plain self-attention ``nn.MultiheadAttention`` or a
        :class:`PrunableMultiheadAttention` (same parameters, same outputs)."""
        w, b = attn.in_proj_weight, attn.in_proj_bias
        new = cls(attn.embed_dim, attn.num_heads, attn.head_dim, attn.dropout, b is not None, attn.batch_first)
        new.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.in_proj.weight.copy_(w)
            new.out_proj.weight.copy_(attn.out_proj.weight)
            if b is not None:
                new.in_proj.bias.copy_(b)
                new.out_proj.bias.copy_(attn.out_proj.bias)
        return new

    def project(self, query, key, value):
        """(q, k, v), each (N, T, H·d), from batch-first inputs."""
        inner = self.num_heads * self.head_dim
        if query is key and key is value:  # self-attention: one projection, as the fused kernels do
            return self.in_proj(query).split(inner, dim=-1)
        # otherwise the third of each projection that belongs to it
        return (self.in_proj(query)[..., :inner], self.in_proj(key)[..., inner:2 * inner],
                self.in_proj(value)[..., 2 * inner:])

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        return multihead_forward(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                                 average_attn_weights, is_causal)


def _replace(model: nn.Module, convert, wanted) -> list[str]:
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if wanted(full, child):
                setattr(module, child_name, convert(child))
                replaced.append(full)
    for module in model.modules():  # the nested-tensor path assumes torch's fused attention
        if isinstance(module, nn.TransformerEncoder) and \
                any(isinstance(m, ProjectedMultiheadAttention) for m in module.modules()):
            module.use_nested_tensor = False
    return replaced


def project_attention_(model: nn.Module, names: set[str] | None = None) -> list[str]:
    """Replace self-attention modules (``nn.MultiheadAttention`` without kdim/vdim, bias_kv or zero_attn, and
    :class:`PrunableMultiheadAttention`) by :class:`ProjectedMultiheadAttention`, in place.

    Args:
        names: only these modules (an artifact's record); None: every convertible one.
    Returns:
        names of the replaced modules.
    """
    def wanted(name: str, module: nn.Module) -> bool:
        kind = is_convertible(module) or isinstance(module, PrunableMultiheadAttention)
        return kind and (names is None or name in names)

    return _replace(model, ProjectedMultiheadAttention.from_attention, wanted)


def _as_multihead(attn: ProjectedMultiheadAttention) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(attn.embed_dim, attn.num_heads, attn.dropout, bias=attn.in_proj.bias is not None,
                                batch_first=attn.batch_first, device=attn.in_proj.weight.device)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.in_proj.weight)
        mha.out_proj.weight.copy_(attn.out_proj.weight)
        if mha.in_proj_bias is not None:
            mha.in_proj_bias.copy_(attn.in_proj.bias)
            mha.out_proj.bias.copy_(attn.out_proj.bias)
    return mha.train(attn.training)


def unproject_attention_(model: nn.Module) -> list[str]:
    """Back to ``nn.MultiheadAttention`` (torch's fused kernels) wherever the projections are plain Linear layers
    and no head was pruned; returns the names converted."""
    def wanted(_name: str, module: nn.Module) -> bool:
        return (isinstance(module, ProjectedMultiheadAttention) and type(module.in_proj) is nn.Linear
                and type(module.out_proj) is nn.Linear and module.num_heads * module.head_dim == module.embed_dim)

    replaced = _replace(model, _as_multihead, wanted)
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and not any(
                isinstance(m, (ProjectedMultiheadAttention, PrunableMultiheadAttention)) for m in module.modules()):
            module.use_nested_tensor = module.enable_nested_tensor
    return replaced
