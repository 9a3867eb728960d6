import math

import pytest
import torch

from torchslim._errors import ConfigError
from torchslim.prune import MagnitudeConfig, StructuredConfig, overrides_from_sensitivity, prune_, sensitivity
from torchslim.prune.sensitivity import SensitivityTable

from .models import LeNet5, MLP

SPARSITIES = [0.0, 0.3, 0.6, 0.9]


def _fidelity(reference, x):
    """Higher is better: minus the mean squared distance to the unpruned model's outputs."""
    with torch.no_grad():
        ref = reference(x)

    def evaluate(model):
        with torch.no_grad():
            return -float(((model(x) - ref) ** 2).mean())
    return evaluate


def test_magnitude_sensitivity_table_and_overrides():
    model, x = MLP(), torch.randn(64, 64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate = _fidelity(model, x)
    table = sensitivity(model, MagnitudeConfig(sparsity=0.5), SPARSITIES, evaluate)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the model is untouched
    assert table.layers == ["fc1", "fc2", "fc3"] and len(table.rows) == 12
    assert table.baseline == 0.0
    for layer in table.layers:
        assert table.metric(layer, 0.0) == 0.0
        drops = [table.drop(table.metric(layer, s)) for s in SPARSITIES]
        assert drops == sorted(drops) and drops[-1] > 0  # more pruning hurts more
    # a row is what pruning that layer alone gives
    alone = MLP()
    alone.load_state_dict(state)
    prune_(alone, MagnitudeConfig(sparsity=0.0, overrides={"fc2": 0.6}))
    assert table.metric("fc2", 0.6) == evaluate(alone)

    assert overrides_from_sensitivity(table, 0.0) == {"fc1": 0.0, "fc2": 0.0, "fc3": 0.0}
    assert overrides_from_sensitivity(table, 1e9) == {"fc1": 0.9, "fc2": 0.9, "fc3": 0.9}
    bound = table.drop(table.metric("fc3", 0.3))
    chosen = overrides_from_sensitivity(table, bound)
    for layer, s in chosen.items():
        assert table.drop(table.metric(layer, s)) <= bound
        bigger = [t for t in SPARSITIES if t > s]
        if bigger:
            assert table.drop(table.metric(layer, bigger[0])) > bound
    assert chosen["fc3"] >= 0.3


def test_structured_sensitivity_units_and_whole_layer_rows():
    model, x = LeNet5(), torch.randn(8, 1, 8, 8)
    table = sensitivity(model, StructuredConfig(sparsity=0.5), [0.5, 0.99], _fidelity(model, x), example_inputs=x)
    assert table.layers == ["conv1", "conv2", "fc1"]  # fc2 feeds the output: never a unit
    # 0.99 of 32 channels rounds to all 32: no model, NaN; of 64 it leaves 1, of 256 it leaves 3
    assert math.isnan(table.metric("conv1", 0.99))
    assert not math.isnan(table.metric("conv2", 0.99)) and not math.isnan(table.metric("fc1", 0.99))
    assert overrides_from_sensitivity(table, 1e9) == {"conv1": 0.5, "conv2": 0.99, "fc1": 0.99}


def test_lower_is_better_and_bad_bound():
    table = SensitivityTable(1.0, (("a", 0.5, 1.2), ("a", 0.8, 2.0)), higher_is_better=False)
    assert overrides_from_sensitivity(table, 0.5) == {"a": 0.5}
    with pytest.raises(ConfigError):
        overrides_from_sensitivity(table, -1)
