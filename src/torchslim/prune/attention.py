"""Self-attention whose heads can be removed: the inner width ``num_heads * head_dim`` is free of ``embed_dim``.

``nn.MultiheadAttention`` ties ``num_heads * head_dim == embed_dim``, so one cannot drop a head without shrinking
the residual stream (``d_model``). :class:`PrunableMultiheadAttention` computes the same function with the same
parameter names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), only the inner width may shrink.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrunableMultiheadAttention", "convert_attention_", "is_convertible", "multihead_forward", "prune_heads_",
           "replace_attention_"]


class PrunableMultiheadAttention(nn.Module):
    """Drop-in for a self-attention ``nn.MultiheadAttention`` whose heads can be removed.

    Args:
        embed_dim: width of the residual stream (d_model); never changes.
        num_heads: number of heads.
        head_dim: width of one head; ``num_heads * head_dim`` may differ from ``embed_dim``.
        dropout: dropout on the attention weights while training.
        bias: whether the projections have biases.
        batch_first: inputs are (N, L, E) rather than (L, N, E).
    """

    # nn.TransformerEncoderLayer/Encoder read this flag; False keeps them off their fused kernels,
    # which assume num_heads * head_dim == embed_dim.
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0,
                 bias: bool = True, batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        # rows: [q heads | k heads | v heads], each block (num_heads * head_dim, embed_dim)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, **kw))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner, **kw)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **kw)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention) -> "PrunableMultiheadAttention":
        """The same attention (same parameters, same outputs) as a self-attention ``mha``."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise TypeError("only plain self-attention nn.MultiheadAttention (no kdim/vdim, bias_kv, zero_attn) "
                            "can be converted")
        w = mha.in_proj_weight
        new = cls(mha.embed_dim, mha.num_heads, mha.head_dim, mha.dropout, mha.in_proj_bias is not None,
                  mha.batch_first, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.in_proj_weight.copy_(w)
            if new.in_proj_bias is not None:
                new.in_proj_bias.copy_(mha.in_proj_bias)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if new.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new

    def project(self, query, key, value):
        """(q, k, v), each (N, T, H·d), from batch-first inputs: the q, k and v blocks of ``in_proj_weight``."""
        inner = self.num_heads * self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.split(inner)
        b_q, b_k, b_v = self.in_proj_bias.split(inner) if self.in_proj_bias is not None else (None,) * 3
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        """Same call convention as ``nn.MultiheadAttention`` (self-attention: query, key, value alike in shape).

        Returns:
            (output, weights): output like ``query``; weights (N, L, S) averaged over heads, or (N, H, L, S),
            when ``need_weights``, else None.
        """
        return multihead_forward(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                                 average_attn_weights, is_causal)


def multihead_forward(attn: nn.Module, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                      average_attn_weights=True, is_causal=False):
    """``nn.MultiheadAttention``'s forward for a module whose inner width ``num_heads * head_dim`` is its own.

    ``attn`` has ``num_heads``, ``head_dim``, ``dropout``, ``batch_first``, ``out_proj`` and
    ``project(query, key, value) -> (q, k, v)``, each (N, T, H·d) from batch-first inputs: only how q, k and v
    are projected differs between :class:`PrunableMultiheadAttention` and the quantizable
    ``ProjectedMultiheadAttention``.
    """
    if not attn.batch_first:  # (L, N, E) -> (N, L, E); self-attention stays one tensor (``project`` may check)
        if query is key and key is value:
            query = key = value = query.transpose(0, 1)
        else:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    n, tgt, _ = query.shape
    src = key.shape[1]
    h, d = attn.num_heads, attn.head_dim

    def heads(x, length):  # (N, T, H*d) -> (N, H, T, d)
        return x.reshape(n, length, h, d).transpose(1, 2)

    q, k, v = attn.project(query, key, value)
    q, k, v = heads(q, tgt), heads(k, src), heads(v, src)
    mask = _additive_mask(attn_mask, key_padding_mask, is_causal, n, h, tgt, src, q.dtype, q.device)
    scores = q @ k.transpose(-2, -1) / d ** 0.5  # (N, H, L, S)
    if mask is not None:
        scores = scores + mask
    weights = scores.softmax(-1)
    dropped = F.dropout(weights, attn.dropout, attn.training) if attn.dropout > 0 else weights
    out = attn.out_proj((dropped @ v).transpose(1, 2).reshape(n, tgt, h * d))  # (N, L, E)
    if not attn.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, (weights.mean(1) if average_attn_weights else weights)


def _additive_mask(attn_mask, key_padding_mask, is_causal, n, h, tgt, src, dtype, device):
    """Masks in ``nn.MultiheadAttention`` conventions (bool True = blocked) as one additive (N, H, L, S) float mask."""
    def additive(m):
        return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)

    mask = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=device).triu(1)
    if attn_mask is not None:
        m = additive(attn_mask)
        mask = m.view(n, h, tgt, src) if m.dim() == 3 else m.view(1, 1, tgt, src)
    if key_padding_mask is not None:
        kp = additive(key_padding_mask).view(n, 1, 1, src)
        mask = kp if mask is None else mask + kp
    return mask


def is_convertible(module: nn.Module) -> bool:
    """Whether ``module`` is a plain self-attention ``nn.MultiheadAttention`` (no kdim/vdim, bias_kv, zero_attn),
    the kind :class:`PrunableMultiheadAttention` replaces."""
    return isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim and module.bias_k is None \
        and not module.add_zero_attn


def replace_attention_(model: nn.Module, wanted: Callable[[str, nn.MultiheadAttention], bool]) -> list[str]:
    """Replace, in place, each convertible attention ``wanted(name, module)`` accepts by the equivalent
    :class:`PrunableMultiheadAttention`; then keep every ``nn.TransformerEncoder`` holding one off its
    nested-tensor path, which assumes the fused kernel the converted layers do not use.

    Returns:
        names of the replaced modules.
    """
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if is_convertible(child) and wanted(full, child):
                setattr(module, child_name, PrunableMultiheadAttention.from_multihead_attention(child))
                replaced.append(full)
    # A second pass: an encoder is visited before its layers, so only now do we know which hold converted ones.
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and \
                any(isinstance(m, PrunableMultiheadAttention) for m in module.modules()):
            module.use_nested_tensor = False
    return replaced


def convert_attention_(model: nn.Module) -> list[str]:
    """Replace every convertible self-attention ``nn.MultiheadAttention`` in ``model`` by the equivalent
    :class:`PrunableMultiheadAttention`, in place, so its heads become removable.

    Returns:
        names of the replaced modules.
    """
    return replace_attention_(model, lambda _name, _module: True)


@torch.no_grad()
def prune_heads_(attn: PrunableMultiheadAttention, heads: list[int]) -> None:
    """Remove ``heads`` (indices into the current heads) from ``attn``, in place: their q/k/v rows and the
    matching input columns of ``out_proj``. ``embed_dim`` is unchanged."""
    keep_heads = [h for h in range(attn.num_heads) if h not in set(heads)]
    hd, inner = attn.head_dim, attn.num_heads * attn.head_dim
    # inner columns kept: head h owns [h*hd, (h+1)*hd)
    cols = torch.tensor([h * hd + i for h in keep_heads for i in range(hd)], dtype=torch.long,
                        device=attn.in_proj_weight.device)
    rows = torch.cat([cols + j * inner for j in range(3)])  # the same columns in the q, k and v blocks
    attn.in_proj_weight = nn.Parameter(attn.in_proj_weight[rows].clone())
    if attn.in_proj_bias is not None:
        attn.in_proj_bias = nn.Parameter(attn.in_proj_bias[rows].clone())
    attn.out_proj.weight = nn.Parameter(attn.out_proj.weight[:, cols].clone())
    attn.out_proj.in_features = len(cols)
    attn.num_heads = len(keep_heads)
