"""Small self-made models for the pruning tests."""

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """conv 1->32 3x3, conv 32->64 3x3, maxpool 2, fc -> 256, fc -> 10; input (N, 1, 8, 8)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 2 * 2, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):  # (N, 1, 8, 8)
        x = F.relu(self.conv1(x))  # (N, 32, 6, 6)
        x = self.pool(F.relu(self.conv2(x)))  # (N, 64, 2, 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))  # (N, 10)


class MLP(nn.Module):
    """64-300-100-10 with nn.ReLU modules."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 300), nn.Linear(300, 100), nn.Linear(100, 10)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x.flatten(1))))))


class ResNetTiny(nn.Module):
    """Residual adds, BatchNorm, a grouped conv, a concatenation and flatten-into-linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv_a = nn.Conv2d(16, 16, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(16)
        self.conv_b = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.bn_b = nn.BatchNorm2d(16)
        self.side = nn.Conv2d(16, 8, 1)
        self.merge = nn.Conv2d(24, 16, 1)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):  # (N, 1, 8, 8)
        x = F.relu(self.bn0(self.stem(x)))  # (N, 16, 8, 8)
        y = F.relu(self.bn_a(self.conv_a(x)))
        x = F.relu(x + self.bn_b(self.conv_b(y)))  # residual add couples stem, conv_b
        x = torch.cat([x, F.relu(self.side(x))], 1)  # (N, 24, 8, 8)
        x = F.max_pool2d(F.relu(self.merge(x)), 2)  # (N, 16, 4, 4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class TransformerClassifier(nn.Module):
    """Linear embedding -> nn.TransformerEncoder (2 layers, 4 heads) -> mean pool -> head.

    ``nested``: the encoder's ``enable_nested_tensor`` (torch's default is True).
    """

    def __init__(self, d_model=16, heads=4, ffn=32, batch_first=True, nested=False):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(6, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, ffn, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested)
        self.head = nn.Linear(d_model, 3)

    def forward(self, x, key_padding_mask=None):  # (N, L, 6)
        h = self.embed(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = self.encoder(h, src_key_padding_mask=key_padding_mask)
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.head(h.mean(1))  # (N, 3)
