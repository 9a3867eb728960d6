"""Recurrent layers (RNN, LSTM, GRU, and their cells) hold their weights as several matrices (``weight_ih_l0``,
``weight_hh_l0_reverse``, a cell's ``weight_ih`` and ``weight_hh``, ...) instead of one ``weight``; the methods
that act on them take them from here."""

from __future__ import annotations

import torch
from torch import nn


RECURRENT_BASES = (nn.RNNBase, nn.RNNCellBase)  # whole sequences (torch's fused kernel) and single steps
RECURRENT = (nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell)  # torch's own, by exact type


def is_recurrent(module: nn.Module) -> bool:
    """An RNN / LSTM / GRU layer or cell."""
    return isinstance(module, RECURRENT_BASES)


def recurrent_weights(rnn: nn.Module) -> dict[str, torch.Tensor]:
    """{name: matrix} of a recurrent layer's weights, in torch's order (its biases left out)."""
    return {name: p for name, p in rnn.named_parameters(recurse=False) if name.startswith("weight_")}
