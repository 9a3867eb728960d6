"""A BERT sentence encoder written out in plain torch: token ids -> mean-pooled, normalised sentence embeddings.

Why our own module rather than ``transformers.BertModel``: an artifact must rebuild it from numbers in its manifest
without importing anyone's code; every layer may keep a different number of attention heads and FFN neurons after
structured pruning; dropping layers is removing list items; and the eager attention below exports to the ONNX
pattern ONNX Runtime's transformer optimizer fuses. The state dict keys are those of a Hugging Face BERT checkpoint
(``embeddings.word_embeddings.weight``, ``encoder.layer.0.attention.self.query.weight``, ...), so a
sentence-transformers checkpoint loads as it is.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class Embeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int, type_vocab_size: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (N, T) -> (N, T, H)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        x = x + self.token_type_embeddings.weight[0]  # one segment: type 0 everywhere
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, hidden_size: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.query = nn.Linear(hidden_size, inner)
        self.key = nn.Linear(hidden_size, inner)
        self.value = nn.Linear(hidden_size, inner)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, heads*d) -> (N, heads, T, d)
        n, t, _ = x.shape
        return x.view(n, t, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (N, heads, T, T)
        probs = torch.softmax(scores + mask_bias, dim=-1)
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()  # (N, T, heads, d)
        return context.view(context.shape[0], context.shape[1], self.heads * self.head_dim)


class DenseNorm(nn.Module):
    """Projection back to the hidden size, residual add, LayerNorm (BERT's ``*.output``)."""

    def __init__(self, in_features: int, hidden_size: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        self.self = SelfAttention(hidden_size, heads, head_dim)
        self.output = DenseNorm(heads * head_dim, hidden_size, eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, hidden_size: int, ffn: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, hidden_size: int, heads: int, head_dim: int, ffn: int, eps: float):
        super().__init__()
        self.attention = Attention(hidden_size, heads, head_dim, eps)
        self.intermediate = Intermediate(hidden_size, ffn)
        self.output = DenseNorm(ffn, hidden_size, eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, hidden_size: int, heads: list[int], head_dim: int, ffn: list[int], eps: float):
        super().__init__()
        self.layer = nn.ModuleList(Layer(hidden_size, h, head_dim, f, eps) for h, f in zip(heads, ffn))


class SentenceEncoder(nn.Module):
    """BERT + mean pooling over real tokens (+ L2 normalisation): ``(input_ids, attention_mask) -> (N, hidden)``.

    Args:
        heads, ffn: attention heads and FFN neurons of each layer (their lengths give the depth); pruning and
            layer dropping change these, and the manifest records them, so the artifact rebuilds the same shapes.
        normalize: L2-normalise the pooled embedding (sentence-transformers' ``Normalize`` module).
    """

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 384, heads: Optional[list[int]] = None,
                 head_dim: int = 32, ffn: Optional[list[int]] = None, max_positions: int = 512,
                 type_vocab_size: int = 2, layer_norm_eps: float = 1e-12, normalize: bool = True):
        super().__init__()
        heads = list(heads) if heads is not None else [12] * 6
        ffn = list(ffn) if ffn is not None else [1536] * len(heads)
        if len(heads) != len(ffn):
            raise ValueError(f"heads ({len(heads)} layers) and ffn ({len(ffn)} layers) must have the same length")
        if any(h < 1 for h in heads) or any(f < 1 for f in ffn):
            raise ValueError("every layer needs at least one attention head and one FFN neuron")
        self.normalize = normalize
        self.embeddings = Embeddings(vocab_size, hidden_size, max_positions, type_vocab_size, layer_norm_eps)
        self.encoder = Encoder(hidden_size, heads, head_dim, ffn, layer_norm_eps)

    @property
    def config(self) -> dict:
        """The constructor's arguments for the current shapes (what the manifest records)."""
        layers = self.encoder.layer
        emb = self.embeddings
        return {"vocab_size": emb.word_embeddings.num_embeddings, "hidden_size": emb.word_embeddings.embedding_dim,
                "heads": [l.attention.self.heads for l in layers],
                "head_dim": layers[0].attention.self.head_dim if len(layers) else 32,
                "ffn": [l.intermediate.dense.out_features for l in layers],
                "max_positions": emb.position_embeddings.num_embeddings,
                "type_vocab_size": emb.token_type_embeddings.num_embeddings,
                "layer_norm_eps": emb.LayerNorm.eps, "normalize": self.normalize}

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """The embedding output and every layer's output, each (N, T, hidden): what feature distillation matches."""
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        states = [self.embeddings(input_ids)]
        for layer in self.encoder.layer:
            states.append(layer(states[-1], mask_bias))
        return states

    def pool(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens, then (optionally) L2 normalisation: (N, T, H) -> (N, H)."""
        weights = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.hidden_states(input_ids, attention_mask)[-1], attention_mask)
