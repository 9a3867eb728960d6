"""Small self-made models and data for the quantization tests (imported by name: no other test folder uses it)."""

import importlib.util

import pytest
import torch
from torch import nn

# ONNX Runtime builds the int8 models of static, dynamic and 8-bit qat; only the tests that need it skip without it
requires_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")


class LeNet5(nn.Module):
    """LeNet-5 for 8x8 inputs: conv 1→32 3x3, conv 32→64 3x3, 2x2 max pool, fc → 256, fc → 10."""

    def __init__(self, batch_norm: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.bn1 = nn.BatchNorm2d(32) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 2 * 2, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):  # (N, 1, 8, 8)
        x = torch.relu(self.bn1(self.conv1(x)))  # (N, 32, 6, 6)
        x = self.pool(torch.relu(self.conv2(x)))  # (N, 64, 2, 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))  # (N, 10)


class MLP(nn.Module):
    """64-300-100-10 MLP with layers fc1/fc2/fc3."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 300), nn.Linear(300, 100), nn.Linear(100, 10)

    def forward(self, x):  # (N, 64)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


def image_batches(n_batches: int = 4, batch: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 1, 8, 8, generator=g) for _ in range(n_batches)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
