"""Built-in reference models, each correct for its input shape and with width knobs for students.

Every model records ``input_shape`` (without the batch axis) so data of another shape is refused before training.
"""

from __future__ import annotations

import torch
from torch import nn


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class LeNet300100(nn.Module):
    """The classic LeNet-300-100 MLP on 8x8 digits: 64 -> 300 -> 100 -> classes."""

    input_shape = (1, 8, 8)

    def __init__(self, hidden1: int = 300, hidden2: int = 100, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        h1, h2 = _scaled(hidden1, width), _scaled(hidden2, width)
        self.fc1 = nn.Linear(64, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 8, 8)
        x = torch.flatten(x, 1)  # (N, 64)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 adapted to 8x8 inputs: conv3x3 -> conv3x3 -> maxpool 2 -> fc -> fc.

    Shapes: (N,1,8,8) -conv1-> (N,32,6,6) -conv2-> (N,64,4,4) -pool-> (N,64,2,2) -flatten-> (N,256).
    """

    input_shape = (1, 8, 8)

    def __init__(self, conv1: int = 32, conv2: int = 64, fc: int = 256, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        c1, c2, f = _scaled(conv1, width), _scaled(conv2, width), _scaled(fc, width)
        self.conv1 = nn.Conv2d(1, c1, 3)
        self.conv2 = nn.Conv2d(c1, c2, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * 2 * 2, f)
        self.fc2 = nn.Linear(f, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


class MNIST1DCNN(nn.Module):
    """The MNIST-1D paper's CNN: three strided 1-D convs and a linear head.

    Shapes: (N,1,40) -conv1 k5 s2-> (N,C,19) -conv2 k3 s2-> (N,C,10) -conv3 k3 s2-> (N,C,5) -> (N,5C) -> classes.
    """

    input_shape = (1, 40)

    def __init__(self, channels: int = 32, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        c = _scaled(channels, width)
        self.conv1 = nn.Conv1d(1, c, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(c, c, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(c, c, 3, stride=2, padding=1)
        self.fc = nn.Linear(c * 5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


class MNIST1DMLP(nn.Module):
    """The MNIST-1D paper's MLP baseline: 40 -> 100 -> 100 -> classes."""

    input_shape = (1, 40)

    def __init__(self, hidden: int = 100, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        h = _scaled(hidden, width)
        self.fc1 = nn.Linear(40, h)
        self.fc2 = nn.Linear(h, h)
        self.fc3 = nn.Linear(h, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class MLP(nn.Module):
    """A multilayer perceptron sized from the data: flattened inputs -> ``hidden`` layers (ReLU) -> classes.

    ``input_shape`` and ``num_classes`` are filled in from the domain's data when the domain does not give them;
    ``width`` scales every hidden layer (students).
    """

    def __init__(self, input_shape: tuple[int, ...] | list[int], num_classes: int = 2,
                 hidden: tuple[int, ...] | list[int] = (128, 64), width: float = 1.0):
        super().__init__()
        if isinstance(hidden, (int, str)) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0
                                                     for h in hidden):
            raise ValueError(f"hidden must be a list of positive integers, got {hidden!r}")
        self.input_shape = tuple(int(d) for d in input_shape)
        sizes = [int(torch.Size(self.input_shape).numel()), *(_scaled(h, width) for h in hidden)]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, *input_shape)
        return self.layers(x)


BUILTIN_MODELS: dict[str, type[nn.Module]] = {
    "lenet300_100": LeNet300100,
    "lenet5": LeNet5,
    "mnist1d_cnn": MNIST1DCNN,
    "mnist1d_mlp": MNIST1DMLP,
    "mlp": MLP,
}
