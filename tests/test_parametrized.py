"""Reparametrized weights (weight_norm, spectral_norm) are baked before compression: methods act on a plain
weight, the baseline copy made before keeps working, and the artifact rebuilds the baked layers."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from torchslim._parametrized import bake_parametrizations_, baked_weights
from torchslim.artifact import ArtifactError, load_artifact, read_manifest, save_artifact
from torchslim.prune import MagnitudeConfig, StructuredConfig, prune_
from torchslim.quantize import KMeansConfig, quantize_

pytestmark = pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = parametrizations.weight_norm(nn.Conv1d(1, 8, 3, padding=1))
        self.c2 = nn.utils.weight_norm(nn.Conv1d(8, 8, 3, padding=1))  # the older, hook-based form
        self.fc = parametrizations.spectral_norm(nn.Linear(8 * 6, 4))

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


def _model(seed=0):
    torch.manual_seed(seed)
    return Normed().eval()


def test_baking_keeps_the_function_and_a_copy_made_before_keeps_running():
    model, x = _model(), torch.randn(5, 1, 6)
    expected = model(x)
    del model.c2._forward_pre_hooks[next(iter(model.c2._forward_pre_hooks))]  # (torch cannot copy a hook-based
    model.c2.weight = nn.Parameter(model.c2.weight.detach())                  # weight_norm's computed weight)
    before = copy.deepcopy(model)
    assert bake_parametrizations_(model) == ["c1.weight", "fc.weight"]
    assert baked_weights(model) == ["c1.weight", "fc.weight"]
    assert type(model.c1) is nn.Conv1d and type(model.fc) is nn.Linear and not model.c2._forward_pre_hooks
    assert [sorted(n for n, _ in m.named_parameters()) for m in (model.c1, model.fc)] == [["bias", "weight"]] * 2
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(before(x), expected)  # its parametrization is intact (torch shares its class)
    assert bake_parametrizations_(model) == []


def test_the_older_hook_based_weight_norm_is_baked_too():
    model, x = _model(), torch.randn(5, 1, 6)
    expected = model(x)
    assert bake_parametrizations_(model) == ["c1.weight", "c2.weight", "fc.weight"]
    assert not model.c2._forward_pre_hooks and isinstance(model.c2.weight, nn.Parameter)
    torch.testing.assert_close(model(x), expected)
    copy.deepcopy(model)  # plain weights copy


def test_pruning_and_quantization_act_on_the_baked_weights():
    model = _model()
    prune_(model, MagnitudeConfig(sparsity=0.5))
    assert [float((m.weight == 0).float().mean()) for m in (model.c1, model.c2, model.fc)] == [0.5, 0.5, 0.5]
    model, x = _model(), torch.randn(5, 1, 6)
    report = prune_(model, StructuredConfig(sparsity=0.5), example_inputs=x)
    assert (model.c1.out_channels, model.c2.out_channels) == (4, 4) and model(x).shape == (5, 4)
    assert len(report.layer("c1").removed) == 4
    model = _model()
    report = quantize_(model, KMeansConfig(bits=3, finetune=None))
    assert set(report.layers) == {"c1", "c2", "fc"}


def test_the_artifact_rebuilds_baked_layers_from_the_architecture(tmp_path):
    model, x = _model(), torch.randn(5, 1, 6)
    quantize_(model, KMeansConfig(bits=4, finetune=None))
    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_parametrized:Normed"})
    assert read_manifest(path)["structure"]["baked_parametrizations"] == ["c1.weight", "c2.weight", "fc.weight"]
    loaded, _ = load_artifact(path, model=_model(seed=1))
    torch.testing.assert_close(loaded(x), model(x))
    # saved again from the loaded model: the record goes on
    again = save_artifact(loaded, tmp_path / "b", architecture={"module": "test_parametrized:Normed"})
    assert read_manifest(again)["structure"]["baked_parametrizations"] == ["c1.weight", "c2.weight", "fc.weight"]


def test_a_recorded_weight_the_built_model_does_not_parametrize_is_one_line(tmp_path):
    model = _model()
    bake_parametrizations_(model)
    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_parametrized:Normed"})
    plain = nn.Sequential()
    plain.c1, plain.c2, plain.fc = nn.Conv1d(1, 8, 3, padding=1), nn.Conv1d(8, 8, 3, padding=1), nn.Linear(48, 4)
    with pytest.raises(ArtifactError, match=r"the stored tensors do not fit the recorded model: c1.weight is not "
                                            r"parametrized in the built model$"):
        load_artifact(path, model=plain)
