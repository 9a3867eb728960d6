"""The factory of domains/digits_transformer.yaml: a small Transformer encoder classifier for 8x8 digits
(torchslim has no built-in transformer model)."""

from __future__ import annotations

import torch
from torch import nn


class RowTransformer(nn.Module):
    """Rows as tokens: Linear(8 -> d) embedding + learned positions, nn.TransformerEncoder (GELU FFN), final
    LayerNorm, mean pool, head. Structured pruning removes its heads and FFN neurons; d_model stays."""

    def __init__(self, num_classes: int = 10, d_model: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        self.pos = nn.Parameter(torch.zeros(1, 8, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, ffn, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x):  # (N, 1, 8, 8)
        h = self.embed(x.flatten(1, 2)) + self.pos  # (N, 8 tokens, d)
        return self.head(self.norm(self.encoder(h)).mean(1))  # (N, classes)


def build_row_transformer(num_classes: int = 10, d_model: int = 32, heads: int = 4, ffn: int = 64,
                          layers: int = 2) -> RowTransformer:
    return RowTransformer(num_classes, d_model, heads, ffn, layers)
