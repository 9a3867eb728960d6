"""torchslim.compress: a model and data in memory through the same runner and measurements as the CLI."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchslim
from torchslim._errors import ConfigError
from torchslim.artifact import read_manifest
from torchslim.data import load_splits
from torchslim.domain import DataSpec
from torchslim.evaluate import compute_metric


class SmallNet(nn.Module):
    """A user's own model: no factory, no built-in name."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 10))

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    splits = load_splits(DataSpec(source="digits"), input_shape=(1, 8, 8))
    model = SmallNet()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = splits.train.tensors
    for _ in range(20):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval(), splits


def test_compress_runs_a_recipe_on_a_module_in_memory_and_reloads_into_a_fresh_one(trained, tmp_path, one_thread):
    model, splits = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = (splits.train, DataLoader(splits.val, batch_size=50), splits.test)  # datasets or loaders
    recipe = [{"prune": {"method": "magnitude", "sparsity": 0.6}}, {"quantize": {"method": "kmeans", "bits": 4}}]
    result = torchslim.compress(model, data, recipe, constraints={"max_metric_drop": 0.05}, out=tmp_path / "run",
                                threads=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the given model is untouched
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result.metrics == on_disk
    assert result.metrics["value"] == pytest.approx(compute_metric(result.model, splits.test, "accuracy"))
    assert result.metrics["baseline_value"] == pytest.approx(compute_metric(model, splits.test, "accuracy"))
    assert result.metrics["compression_ratio"] > 6  # 4-bit codes, 60 % of them zero, and a manifest
    assert result.metrics["nonzero_params"] < 0.45 * result.metrics["params"]
    assert result.metrics["data"]["source"] == "memory" and result.metrics["data"]["stratified"] is False

    saved = result.save(tmp_path / "saved")
    assert read_manifest(saved)["architecture"] == {"module": f"{SmallNet.__module__}.SmallNet"}
    with pytest.raises(ConfigError, match=r"given in memory .*SmallNet.*torchslim.load\(path, model=\.\.\.\)"):
        torchslim.load(saved)
    fresh = torchslim.load(saved, model=SmallNet())
    x = splits.test.tensors[0][:16]
    with torch.no_grad():
        assert torch.equal(fresh(x), result.model(x))
    assert type(fresh) is SmallNet and type(fresh.body[1]) is nn.Linear  # decoded into plain layers


@pytest.mark.parametrize("data, recipe, field", [
    ("not three splits", [{"train": {"epochs": 1, "lr": 0.1}}], "data"),
    (None, [{"prune": {"method": "magnitude", "sparsity": 1.5}}], "stages[0].prune.sparsity"),
    (None, [], "stages"),
])
def test_bad_input_names_the_field(trained, data, recipe, field):
    model, splits = trained
    data = (splits.train, splits.val, splits.test) if data is None else data
    with pytest.raises(ConfigError) as err:
        torchslim.compress(model, data, recipe)
    assert err.value.field == field


def test_labels_must_be_integer_classes(trained):
    model, splits = trained
    x, y = splits.train.tensors
    with pytest.raises(ConfigError, match="data.train: must hold float inputs and one integer class label"):
        torchslim.compress(model, (TensorDataset(x, y.float()), splits.val, splits.test),
                           [{"quantize": {"method": "kmeans", "bits": 4}}])
