import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim._errors import ConfigError
from torchslim.prune import ActivationConfig, Calibration, prune_
from torchslim.prune.graph import activation_point, build_graph

from .models import MLP, ResNetTiny

DEAD_FC1 = [3, 17, 42, 100, 299]
DEAD_FC2 = [0, 5, 99]


def _mlp_with_dead_units():
    model = MLP()
    with torch.no_grad():  # these ReLU units never fire on any input of moderate size
        model.fc1.bias[DEAD_FC1] = -1e4
        model.fc2.bias[DEAD_FC2] = -1e4
    return model


def _batches(n=4):
    return [(torch.randn(16, 64), torch.randint(0, 10, (16,))) for _ in range(n)]


def _expected_removed(model, batches, tau):
    """Units whose mean |ReLU output| over the batches, over the layer's max, is below tau."""
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        a1 = F.relu(model.fc1(x))
        a2 = F.relu(model.fc2(a1))
    out = {}
    for name, a in (("fc1", a1), ("fc2", a2)):
        m = a.abs().mean(0)
        out[name] = torch.nonzero(m / m.max() < tau).flatten().tolist()
    return out


def test_dead_units_are_removed_and_outputs_unchanged():
    model, batches = _mlp_with_dead_units(), _batches()
    x = torch.randn(32, 64)
    with torch.no_grad():
        before = model(x)
    report = prune_(model, ActivationConfig(threshold=1e-6), calibration=batches)
    assert list(report.layer("fc1").removed) == DEAD_FC1
    assert list(report.layer("fc2").removed) == DEAD_FC2
    assert report.layer("fc3").removed == ()  # the classifier's outputs are never removed
    assert model.fc1.out_features == 295 and model.fc2.in_features == 295 and model.fc2.out_features == 97
    assert model.fc3.in_features == 97
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)
    assert report.params_before - report.params_after == 5 * (64 + 1) + 5 * 100 + 3 * (295 + 1) + 3 * 10


@pytest.mark.parametrize("tau", [0.4, 0.6])
def test_removes_exactly_the_units_below_threshold(tau):
    model, batches = _mlp_with_dead_units(), _batches()
    expected = _expected_removed(model, batches, tau)
    assert len(expected["fc1"]) > len(DEAD_FC1)  # the threshold reaches live units too
    report = prune_(model, ActivationConfig(threshold=tau), calibration=batches)
    assert list(report.layer("fc1").removed) == expected["fc1"]
    assert list(report.layer("fc2").removed) == expected["fc2"]
    assert model.fc1.out_features == 300 - len(expected["fc1"])


def test_only_the_calibration_batches_asked_for_are_used():
    model, batches = _mlp_with_dead_units(), _batches(6)
    expected = _expected_removed(model, batches[:2], 0.3)
    report = prune_(model, ActivationConfig(threshold=0.3, calibration=Calibration(batches=2)), calibration=batches)
    assert list(report.layer("fc1").removed) == expected["fc1"]


def test_activation_is_taken_after_batchnorm_and_relu():
    model = ResNetTiny()
    graph = build_graph(model, torch.randn(2, 1, 8, 8))
    module, act, dim = activation_point(graph, model.stem)
    assert module is model.bn0 and act is torch.relu and dim == 1
    module, act, dim = activation_point(graph, model.fc1)
    assert module is model.fc1 and act is torch.relu and dim == -1
    module, act, _ = activation_point(graph, model.conv_b)  # bn_b feeds an add, not a ReLU
    assert module is model.bn_b and act is None


def test_residual_net_forward_after_activation_pruning():
    model = ResNetTiny()
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    report = prune_(model, ActivationConfig(threshold=0.5), calibration=batches)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert report.params_after < report.params_before
    assert report.layer("stem").removed == report.layer("conv_b").removed  # coupled by the residual add


def test_threshold_that_empties_a_layer_is_an_error():
    model = MLP()
    with torch.no_grad():
        model.fc2.bias.fill_(-1e4)  # every fc2 unit is dead
    with pytest.raises(ConfigError) as err:
        prune_(model, ActivationConfig(threshold=0.01), calibration=_batches(1))
    assert err.value.field == "threshold" and "fc2" in str(err.value)


def test_ignored_layer_keeps_its_units():
    model = _mlp_with_dead_units()
    report = prune_(model, ActivationConfig(threshold=1e-6, ignore=["fc1"]), calibration=_batches())
    assert report.layer("fc1").removed == () and model.fc1.out_features == 300
    assert list(report.layer("fc2").removed) == DEAD_FC2


def test_needs_calibration_data():
    with pytest.raises(ValueError, match="calibration"):
        prune_(MLP(), ActivationConfig(threshold=0.1))


def test_a_threshold_below_every_unit_says_why_nothing_was_removed():
    model, batches = MLP(), _batches()
    lowest = min((v, n) for n, v in ((n, min(r)) for n, r in _normalised(model, batches).items()))
    report = prune_(model, ActivationConfig(threshold=lowest[0] / 2), calibration=batches)
    assert report.params_after == report.params_before
    assert report.notes == (f"nothing removed: no unit's normalised mean |activation| is below threshold "
                            f"{lowest[0] / 2:g} (the lowest: {lowest[0]:.4g}, in {lowest[1]})",)
    assert prune_(MLP(), ActivationConfig(threshold=0.3), calibration=batches).notes == ()


def _normalised(model, batches):
    """Each hidden layer's mean |ReLU output| per unit over the layer's largest, as floats."""
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        a1 = F.relu(model.fc1(x))
        a2 = F.relu(model.fc2(a1))
    return {name: (a.abs().mean(0) / a.abs().mean(0).max()).tolist() for name, a in (("fc1", a1), ("fc2", a2))}


def test_layers_no_method_prunes_are_named():
    class Scale(nn.Module):  # a custom layer with a parameter of its own
        def __init__(self):
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return x * self.gamma

    class WithGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.gru = nn.Embedding(10, 8), nn.GRU(8, 8, batch_first=True)
            self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 3)
            self.position = nn.Parameter(torch.zeros(8))  # held by the model itself
            self.scale = Scale()

        def forward(self, x):
            return self.head(self.scale(self.norm(self.gru(self.embed(x) + self.position)[0][:, -1])))

    from torchslim.prune import MagnitudeConfig

    report = prune_(WithGRU(), MagnitudeConfig(sparsity=0.5))
    assert [layer.name for layer in report.layers] == ["gru", "head"]  # magnitude prunes the gates' matrices
    own = "itself: not pruned (not the weight of a Linear, convolution, attention or recurrent layer)"
    assert report.unpruned == {"embed": "an embedding table", "position": f"parameters of the model {own}",
                               "scale.gamma": f"parameters of a Scale {own}"}
    from torchslim.prune import StructuredConfig

    report = prune_(WithGRU(), StructuredConfig(sparsity=0.5), example_inputs=torch.randint(0, 10, (4, 5)))
    assert report.unpruned["gru"] == "a recurrent layer: only magnitude pruning acts on its gates"
    assert report.unpruned["position"] == ("parameters of the model itself: not pruned on their own (a cut of the "
                                           "channels they follow takes theirs too)")
