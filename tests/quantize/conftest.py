"""Fixtures for the quantization tests."""

import pytest
import torch

from quant_models import MLP, LeNet5


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return LeNet5().eval()


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP().eval()
