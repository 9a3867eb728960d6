"""Least-squares reconstruction after structured pruning: the refit is the closed-form optimum, recovers a removed
unit exactly where the kept ones can express it, follows cut outputs, and brings a pruned transformer back."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim._errors import ConfigError
from torchslim.prune import StructuredConfig, config_from_mapping, prune_
from torchslim.prune.reconstruct import RIDGES, consumers, reconstruct_


def _keep_linear(layer: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A copy of ``layer`` with only output ``rows`` and input ``cols``."""
    w = layer.weight.detach()
    rows = list(range(w.shape[0])) if rows is None else rows
    cols = list(range(w.shape[1])) if cols is None else cols
    new = nn.Linear(len(cols), len(rows))
    with torch.no_grad():
        new.weight.copy_(w[rows][:, cols])
        new.bias.copy_(layer.bias.detach()[rows])
    return new


def _without_hidden_units(reference: "MLP", keep) -> "MLP":
    """A copy of a two-layer ``reference`` that keeps only the hidden units ``keep`` (the cut, not refit)."""
    model = copy.deepcopy(reference)
    model.fc[0] = _keep_linear(reference.fc[0], rows=keep)
    model.fc[1] = _keep_linear(reference.fc[1], cols=keep)
    return model


class MLP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.fc):
            x = layer(x) if i == len(self.fc) - 1 else F.relu(layer(x))
        return x


def test_the_refit_is_the_least_squares_solution_computed_by_hand():
    torch.manual_seed(0)
    reference = MLP([6, 8, 3])
    keep = [0, 2, 3, 5, 7]
    model = _without_hidden_units(reference, keep)
    batches = [(torch.randn(50, 6), None) for _ in range(3)]
    assert consumers(model, reference) == ["fc.1"]
    assert reconstruct_(model, reference, batches, ridge=0.0) == ["fc.1"]
    x = torch.cat([b for b, _ in batches])
    h = F.relu(reference.fc[0](x))
    a = torch.cat([h[:, keep], torch.ones(len(x), 1)], 1).double()
    solution = torch.linalg.lstsq(a, reference.fc[1](h).detach().double()).solution
    torch.testing.assert_close(model.fc[1].weight.double(), solution[:-1].T, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.fc[1].bias.double(), solution[-1], atol=1e-6, rtol=1e-5)


def _ridge_solution(a: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    gram = a.T @ a
    return torch.linalg.solve(gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=a.dtype), a.T @ y)


def test_the_ridge_is_the_one_that_predicts_held_out_batches_best():
    """Few samples per input: each ridge's refit is fit to three of four batches and scored on the fourth, by
    hand here from the rows themselves; the layer gets the best ridge's refit on all four."""
    torch.manual_seed(3)
    reference = MLP([12, 40, 5])
    keep = list(range(0, 40, 2))
    model = _without_hidden_units(reference, keep)
    batches = [(torch.randn(12, 12), None) for _ in range(4)]
    with torch.no_grad():
        hs = [F.relu(reference.fc[0](x)) for x, _ in batches]
        rows = [torch.cat([h[:, keep], torch.ones(len(h), 1)], 1).double() for h in hs]
        targets = [reference.fc[1](h).double() for h in hs]
    held_out = {}
    for ridge in RIDGES:
        err = 0.0
        for f in range(4):
            a = torch.cat([r for i, r in enumerate(rows) if i != f])
            y = torch.cat([t for i, t in enumerate(targets) if i != f])
            err += float(((rows[f] @ _ridge_solution(a, y, ridge) - targets[f]) ** 2).sum())
        held_out[ridge] = err
    best = min(held_out, key=held_out.get)
    assert reconstruct_(model, reference, batches) == ["fc.1"]
    expected = _ridge_solution(torch.cat(rows), torch.cat(targets), best)
    torch.testing.assert_close(model.fc[1].weight.double(), expected[:-1].T, atol=1e-6, rtol=1e-5)


def test_one_calibration_batch_is_cross_validated_over_its_two_halves():
    torch.manual_seed(5)
    reference = MLP([6, 16, 3])
    keep = list(range(0, 16, 2))
    model = _without_hidden_units(reference, keep)
    x = torch.randn(200, 6)

    def error():
        with torch.no_grad():
            return float(((model(x) - reference(x)) ** 2).mean())

    plain = error()
    assert reconstruct_(model, reference, [(torch.randn(64, 6), None)]) == ["fc.1"]
    assert error() < 0.5 * plain  # on samples it was not fit to


def test_a_layer_whose_cut_lost_nothing_keeps_its_weights():
    """The removed units never fire (ReLU of a large negative bias): the cut weights are already exact, no refit
    predicts held-out batches better, and the layer is left as it is."""
    torch.manual_seed(4)
    reference = MLP([6, 8, 3])
    with torch.no_grad():
        reference.fc[0].bias[[1, 4, 6]] = -100.0
    keep = [0, 2, 3, 5, 7]
    model = _without_hidden_units(reference, keep)
    before = model.fc[1].weight.detach().clone()
    assert reconstruct_(model, reference, [(torch.randn(30, 6), None) for _ in range(4)]) == []
    assert torch.equal(model.fc[1].weight, before)


def test_a_duplicate_unit_is_folded_into_its_twin_and_cut_outputs_are_followed():
    """Hidden unit 1 copies unit 0 in both hidden layers: removing the copies loses nothing, but only if each refit
    sends the copy's weight to its twin and fits the kept outputs of a layer whose own outputs were cut."""
    torch.manual_seed(1)
    reference = MLP([5, 6, 6, 4])
    with torch.no_grad():
        for layer in reference.fc[:2]:
            layer.weight[1], layer.bias[1] = layer.weight[0], layer.bias[0]
    keep = [0, 2, 3, 4, 5]
    model = copy.deepcopy(reference)
    model.fc[0] = _keep_linear(reference.fc[0], rows=keep)
    model.fc[1] = _keep_linear(reference.fc[1], rows=keep, cols=keep)
    model.fc[2] = _keep_linear(reference.fc[2], cols=keep)
    batches = [(torch.randn(40, 5), None) for _ in range(2)]
    x = torch.randn(30, 5)
    plain = (model(x) - reference(x)).abs().max().item()
    assert plain > 0.01  # the copies carried half their twins' weight
    assert reconstruct_(model, reference, batches, {"fc.1": keep}, ridge=0.0) == ["fc.1", "fc.2"]
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", [nn.Conv1d, nn.Conv2d])
def test_a_convolution_is_refit_over_its_patches(conv):
    """Channel 3 of the first conv copies channel 0: with it removed, the refit second conv (stride 2, dilation,
    padding) reproduces the reference to rounding."""
    torch.manual_seed(2)
    shape = (2, 3, 11) if conv is nn.Conv1d else (2, 3, 9, 9)
    first, second = conv(3, 5, 3, padding=1), conv(5, 4, 3, stride=2, padding=2, dilation=2)
    with torch.no_grad():
        first.weight[3], first.bias[3] = first.weight[0], first.bias[0]
    reference = nn.Sequential(first, nn.ReLU(), second)
    keep = [0, 1, 2, 4]
    model = copy.deepcopy(reference)
    with torch.no_grad():
        model[0] = conv(3, 4, 3, padding=1)
        model[0].weight.copy_(first.weight[keep])
        model[0].bias.copy_(first.bias[keep])
        model[2] = conv(4, 4, 3, stride=2, padding=2, dilation=2)
        model[2].weight.copy_(second.weight[:, keep])
        model[2].bias.copy_(second.bias)
    batches = [(torch.randn(*shape), None) for _ in range(4)]
    assert reconstruct_(model, reference, batches, ridge=0.0) == ["2"]
    x = torch.randn(*shape)
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def _trained_transformer(splits, seed=0):
    from torchslim.train import TrainConfig, fit

    from .test_output_taylor import _digits_transformer

    build, _ = _digits_transformer()
    torch.manual_seed(seed)
    model = build(layers=2)
    fit(model, splits.train, splits.val, TrainConfig(epochs=30, lr=3e-3, batch_size=32), seed=seed)
    return model.eval()


def test_a_transformer_pruned_by_half_without_finetuning_keeps_its_accuracy(monkeypatch):
    """Half the heads and FFN neurons of a trained digits transformer, no fine-tuning: the refit layers bring the
    test drop from ~18 points to ~4 (measured, seed 0: 18.1 and 3.6)."""
    from torchslim.data import load_splits
    from torchslim.domain import DataSpec

    monkeypatch.setenv("TQDM_DISABLE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        splits = load_splits(DataSpec(source="digits"), input_shape=(1, 8, 8))
        model = _trained_transformer(splits)
        xs, ys = splits.train.tensors
        calibration = [(xs[i * 64:(i + 1) * 64], ys[i * 64:(i + 1) * 64]) for i in range(8)]
        x, y = splits.test.tensors

        def accuracy(m):
            with torch.no_grad():
                return 100 * (m.eval()(x).argmax(1) == y).float().mean().item()

        before, drops = accuracy(model), {}
        for reconstruct in (False, True):
            pruned = copy.deepcopy(model)
            report = prune_(pruned, StructuredConfig(0.5, importance="output_taylor", reconstruct=reconstruct),
                            calibration=calibration)
            assert [layer.linear2.in_features for layer in pruned.encoder.layers] == [32, 32]
            consumers = [f"encoder.layers.{i}.{name}" for i in (0, 1) for name in ("self_attn.out_proj", "linear2")]
            assert report.refit == (tuple(consumers) if reconstruct else ())
            drops[reconstruct] = before - accuracy(pruned)
    finally:
        torch.set_num_threads(threads)
    assert drops[False] > 10
    assert drops[True] < 5


def test_reconstruct_is_a_boolean_and_needs_calibration_data():
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"method": "structured", "sparsity": 0.5, "reconstruct": "yes"})
    assert str(err.value).startswith("reconstruct")
    assert config_from_mapping({"method": "structured", "sparsity": 0.5, "reconstruct": True}).reconstruct
    with pytest.raises(ValueError, match="reconstruct needs calibration data"):
        prune_(MLP([4, 8, 2]), StructuredConfig(0.5, reconstruct=True), example_inputs=torch.randn(2, 4))
