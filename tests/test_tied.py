"""Tied weights (an output head reusing the embedding table): every method leaves them tied, the artifact stores
them once, and training checkpoints them."""

import pytest
import torch
from torch import nn

from torchslim._tied import tied_weights
from torchslim.artifact import ArtifactError, artifact_bytes, load_artifact, save_artifact
from torchslim.prune import MagnitudeConfig, StructuredConfig, prune_
from torchslim.quantize import KMeansConfig, WeightOnlyConfig, quantize_


class TiedHead(nn.Module):
    """Token ids -> embedding -> Linear -> a head whose weight is the embedding table -> classes."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 16)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, 12, bias=False)
        self.head.weight = self.embed.weight
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        return self.out(self.head(torch.tanh(self.proj(self.embed(x).mean(1)))))


def _model(seed=0):
    torch.manual_seed(seed)
    return TiedHead()


def test_tied_weights_names_every_holder():
    assert tied_weights(_model()) == {"embed": ("head",), "head": ("embed",)}
    assert tied_weights(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))) == {}


@pytest.mark.parametrize("config", [KMeansConfig(bits=4, finetune=None), WeightOnlyConfig(bits=4)])
def test_quantization_leaves_a_tied_weight_tied_and_says_why(config):
    model = _model()
    report = quantize_(model, config)
    assert set(report.layers) == {"proj", "out"}  # the rest is quantized
    assert model.head.weight is model.embed.weight
    assert report.float_layers["head"] == "its weight is tied to embed's: one tensor for both"
    assert report.float_layers["embed"] == "its weight is tied to head's: one tensor for both"


def test_pruning_leaves_a_tied_weight_whole_and_tied():
    model, x = _model(), torch.randint(0, 12, (4, 5))
    report = prune_(model, MagnitudeConfig(sparsity=0.5))
    assert model.head.weight is model.embed.weight and bool((model.embed.weight != 0).all())
    assert report.unpruned["head"] == "its weight is tied to embed's: one tensor for both"
    assert float((model.proj.weight == 0).float().mean()) == 0.5

    model = _model()
    report = prune_(model, StructuredConfig(sparsity=0.5), example_inputs=x)
    # proj's outputs are the head's inputs: cutting them would cut columns of the table the embedding keeps
    assert model.proj.out_features == 16 and model.head.weight is model.embed.weight
    assert any(n.startswith("kept whole: proj (their channels reach head,") for n in report.notes)
    assert model(x).shape == (4, 3)


def test_the_artifact_stores_a_tied_weight_once_and_reloads_it_tied(tmp_path):
    model = _model()
    arch = {"module": "test_tied:TiedHead"}
    path = save_artifact(model, tmp_path / "a", architecture=arch)
    from torchslim.artifact import read_manifest

    manifest = read_manifest(path)
    assert manifest["tied"] == {"head.weight": "embed.weight"} and "head.weight" not in manifest["tensors"]
    loaded, _ = load_artifact(path, model=_model(seed=1))
    assert loaded.head.weight is loaded.embed.weight
    torch.testing.assert_close(loaded.embed.weight, model.embed.weight, rtol=0, atol=0)
    # uncoded (as a baseline is sized), an untied copy of the same model stores one 12x16 fp32 table more
    untied = _model()
    untied.head.weight = nn.Parameter(untied.embed.weight.detach().clone())
    extra = artifact_bytes(untied, architecture=arch, compress=False) - artifact_bytes(model, architecture=arch,
                                                                                        compress=False)
    assert 12 * 16 * 4 - 32 <= extra <= 12 * 16 * 4 + 32  # (the tie itself: a few bytes of manifest)


def test_a_tie_naming_no_stored_tensor_is_one_line(tmp_path):
    from torchslim.artifact._format import update_manifest

    path = save_artifact(_model(), tmp_path / "a", architecture={"module": "test_tied:TiedHead"})
    update_manifest(path, tied={"head.weight": "nothing.weight"})  # resealed: only the content is wrong
    with pytest.raises(ArtifactError, match=r"manifest field tied: 'head.weight' -> 'nothing.weight': each must "
                                            r"map a key not stored to a stored tensor$"):
        load_artifact(path, model=_model())


def test_training_checkpoints_a_tied_model_and_resumes(tmp_path):
    from torch.utils.data import TensorDataset

    from torchslim.train import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 12, (64, 5), generator=g), torch.randint(0, 3, (64,), generator=g)
    data, cfg = TensorDataset(x, y), TrainConfig(epochs=2, lr=1e-2, batch_size=16)
    full = _model()
    fit(full, data, data, cfg, checkpoint=tmp_path / "full.safetensors")
    part = _model()
    fit(part, data, data, TrainConfig(epochs=1, lr=1e-2, batch_size=16), checkpoint=tmp_path / "part.safetensors")
    resumed = _model(seed=5)
    fit(resumed, data, data, cfg, checkpoint=tmp_path / "part.safetensors", resume=True)
    assert resumed.head.weight is resumed.embed.weight
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
