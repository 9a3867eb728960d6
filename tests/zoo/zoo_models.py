"""Small models built of the layers real models are made of, for the digits data (inputs (N, 1, 8, 8)).

Each is built by ``build_<name>(num_classes=10, **kwargs)``, so a domain file (or an artifact) can name it as
``model: {factory: "zoo_models:build_resnet"}`` with this file's folder as the code folder. Every model declares
``input_shape`` (per sample), as the built-in models do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResidualCNN", "RowConv1d", "RowTransformer", "PixelTokenAttention", "build_resnet", "build_conv1d",
           "build_transformer", "build_tokens", "build_encoder", "FACTORIES"]


class ResidualCNN(nn.Module):
    """Conv+BN+SiLU stem, a residual block (grouped conv, then depthwise conv), two concatenated branches,
    global average pool, Linear head."""

    input_shape = (1, 8, 8)

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(width)
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=4)
        self.grouped_bn = nn.BatchNorm2d(width)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.depthwise_bn = nn.BatchNorm2d(width)
        self.branch_a = nn.Conv2d(width, width, 1)
        self.branch_b = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):  # (N, 1, 8, 8)
        x = F.silu(self.stem_bn(self.stem(x)))  # (N, C, 8, 8)
        y = F.silu(self.grouped_bn(self.grouped(x)))
        x = F.silu(x + self.depthwise_bn(self.depthwise(y)))  # residual add
        x = torch.cat([self.branch_a(x), self.branch_b(x)], 1)  # (N, 2C, 8, 8)
        x = F.silu(x).mean((2, 3))  # global average pool: (N, 2C)
        return self.head(x)  # (N, classes)


class RowConv1d(nn.Module):
    """The image as a signal of 8 channels (its rows) and length 8: two Conv1d+BatchNorm1d+GELU, then an MLP."""

    input_shape = (1, 8, 8)

    def __init__(self, num_classes: int = 10, width: int = 64, hidden: int = 64):
        super().__init__()
        self.conv1 = nn.Conv1d(8, width, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(width)
        self.fc1 = nn.Linear(width * 8, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):  # (N, 1, 8, 8)
        x = x.flatten(1, 2)  # (N, 8 rows as channels, 8)
        x = F.gelu(self.bn1(self.conv1(x)))  # (N, W, 8)
        x = F.gelu(self.bn2(self.conv2(x)))
        return self.fc2(F.gelu(self.fc1(x.flatten(1))))  # (N, classes)


class RowTransformer(nn.Module):
    """Rows as tokens: Linear(8 -> d) patch embedding + learned positions, nn.TransformerEncoder (LayerNorm
    inside, GELU FFN), final LayerNorm, mean pool, head."""

    input_shape = (1, 8, 8)

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
        h = self.norm(self.encoder(h))
        return self.head(h.mean(1))  # (N, classes)


class PixelTokenAttention(nn.Module):
    """Each pixel's intensity level (0..16) is a token: nn.Embedding for levels and positions, one
    nn.MultiheadAttention called directly, LayerNorm, a GELU MLP, mean pool, head."""

    input_shape = (1, 8, 8)
    levels = 17  # the digits pixels are multiples of 1/16

    def __init__(self, num_classes: int = 10, d_model: int = 32, heads: int = 4, ffn: int = 64):
        super().__init__()
        self.tokens = nn.Embedding(self.levels, d_model)
        self.positions = nn.Embedding(64, d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn)
        self.fc2 = nn.Linear(ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        self.register_buffer("index", torch.arange(64), persistent=False)

    def forward(self, x):  # (N, 1, 8, 8) in [0, 1]
        ids = (x.flatten(1) * (self.levels - 1)).round().long().clamp(0, self.levels - 1)  # (N, 64)
        h = self.tokens(ids) + self.positions(self.index)  # (N, 64, d)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm1(h + a)
        h = self.norm2(h + self.fc2(F.gelu(self.fc1(h))))
        return self.head(h.mean(1))  # (N, classes)


class RowLSTM(nn.Module):
    """The image's rows as a sequence of 8 steps: a 2-layer bidirectional LSTM, mean over the steps, head."""

    input_shape = (1, 8, 8)

    def __init__(self, num_classes: int = 10, hidden: int = 48, layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, x):  # (N, 1, 8, 8)
        h, _ = self.lstm(x.flatten(1, 2))  # (N, 8 rows, 2 * hidden)
        return self.head(h.mean(1))


def build_resnet(num_classes: int = 10, width: int = 32) -> ResidualCNN:
    return ResidualCNN(num_classes, width)


def build_conv1d(num_classes: int = 10, width: int = 64, hidden: int = 64) -> RowConv1d:
    return RowConv1d(num_classes, width, hidden)


def build_transformer(num_classes: int = 10, d_model: int = 32, heads: int = 4, ffn: int = 64,
                      layers: int = 2) -> RowTransformer:
    return RowTransformer(num_classes, d_model, heads, ffn, layers)


def build_tokens(num_classes: int = 10, d_model: int = 32, heads: int = 4, ffn: int = 64) -> PixelTokenAttention:
    return PixelTokenAttention(num_classes, d_model, heads, ffn)


def build_encoder(num_classes: int = 10, d_model: int = 256, heads: int = 4, ffn: int = 1024,
                  layers: int = 4) -> RowTransformer:
    """The row transformer at BERT-mini's encoder proportions (d 256, 4 heads, FFN 4·d, 4 layers; 3.2 M
    parameters): big enough that its matrix products, not per-op overhead, set the latency."""
    return RowTransformer(num_classes, d_model, heads, ffn, layers)


def build_lstm(num_classes: int = 10, hidden: int = 48, layers: int = 2) -> RowLSTM:
    return RowLSTM(num_classes, hidden, layers)


FACTORIES = {"resnet": build_resnet, "conv1d": build_conv1d, "transformer": build_transformer,
             "tokens": build_tokens, "encoder": build_encoder, "lstm": build_lstm}
