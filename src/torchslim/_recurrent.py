"""Recurrent layers (RNN, LSTM, GRU) hold their weights as several matrices (``weight_ih_l0``,
``weight_hh_l0_reverse``, ...) instead of one ``weight``; the methods that act on them take them from here."""

from __future__ import annotations

import torch
from torch import nn


def recurrent_weights(rnn: nn.RNNBase) -> dict[str, torch.Tensor]:
    """{name: matrix} of a recurrent layer's weights, in torch's order (its biases left out)."""
    return {name: p for name, p in rnn.named_parameters(recurse=False) if name.startswith("weight_")}
