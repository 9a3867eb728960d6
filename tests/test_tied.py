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
def test_weight_only_and_kmeans_code_a_tied_weight_once_for_every_holder(config, tmp_path):
    model, x = _model(), torch.randint(0, 12, (6, 5))
    table = model.embed.weight.detach().clone()
    report = quantize_(model, config)
    assert set(report.layers) == {"embed", "proj", "head", "out"} and "head" not in report.float_layers
    assert model.head.weight_source is model.embed.weight_source  # one set of codes
    torch.testing.assert_close(model.head.weight, model.embed.weight, rtol=0, atol=0)
    assert float((model.embed.weight.detach() - table).abs().max()) < 0.5 * float(table.abs().max())  # the table
    assert report.weight_bytes_fp32 == 4 * (12 * 16 + 16 * 16 + 3 * 12)  # the table counted once
    from torchslim.evaluate import count_params

    assert count_params(model)[0] == sum(p.numel() for p in _model().parameters())
    with torch.no_grad():
        expected = model(x)

    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_tied:TiedHead"})
    from torchslim.artifact import read_manifest

    manifest = read_manifest(path)
    assert manifest["quantization"]["layers"]["head"]["tied_to"] == "embed"
    assert not any(k.startswith("head.weight_source") for k in manifest["tensors"])  # stored once
    loaded, _ = load_artifact(path, model=_model(seed=1))
    assert loaded.head.weight_source is loaded.embed.weight_source
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)

    from torchslim.quantize.deploy import decode_for_inference_

    served = decode_for_inference_(loaded)
    assert type(served.head) is nn.Linear and served.head.weight is served.embed.weight  # tied again
    with torch.no_grad():
        torch.testing.assert_close(served(x), expected, rtol=0, atol=1e-6)

    from torchslim.artifact._inspect import describe_artifact

    rows = {row["name"]: row for row in describe_artifact(path)["layers"]}
    assert rows["embed"]["params"] == 12 * 16 and rows["embed"]["bits"] == 4
    assert "head" not in rows  # no tensor of its own (bias-free): counted with embed
    assert describe_artifact(path)["totals"]["params"] == sum(p.numel() for p in _model().parameters())


def test_a_tie_ignore_touches_stays_float_and_tied_whole():
    model = _model()
    report = quantize_(model, WeightOnlyConfig(bits=4, ignore=["head"]))
    assert set(report.layers) == {"proj", "out"} and model.head.weight is model.embed.weight
    assert report.float_layers["head"] == "ignored by the config"
    assert report.float_layers["embed"] == "its weight is tied to head's: one tensor for both"


def test_qat_below_8_bits_codes_a_tied_weight_once_and_the_int8_methods_leave_it_float():
    from torchslim.quantize import DynamicConfig, QATConfig

    model = _model()
    report = quantize_(model, QATConfig(bits=4), finetune=lambda m, epochs, lr: None)  # ends as packed codes
    assert set(report.layers) == {"embed", "proj", "head", "out"} and report.float_layers == {}
    assert model.head.weight_source is model.embed.weight_source
    model = _model()
    report = quantize_(model, DynamicConfig(), calibration=[(torch.randint(0, 12, (4, 5)),)])
    assert set(report.layers) == {"proj", "out"} and model.head.weight is model.embed.weight
    assert report.float_layers["head"] == "its weight is tied to embed's: one tensor for both"


def test_a_tie_to_a_layer_not_coded_alike_is_one_line(tmp_path):
    from torchslim.artifact._format import update_manifest

    model = _model()
    quantize_(model, KMeansConfig(bits=4, finetune=None))
    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_tied:TiedHead"})
    from torchslim.artifact import read_manifest

    layers = read_manifest(path)["quantization"]["layers"]
    layers["head"]["tied_to"] = "proj"  # a 16x16 weight, not the 12x16 table
    update_manifest(path, quantization={"layers": layers})
    with pytest.raises(ArtifactError, match=r"head.tied_to 'proj' must name another layer whose weight is coded "
                                            r"alike and tied to none"):
        load_artifact(path, model=_model())


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
