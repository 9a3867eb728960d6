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
    # a constraint no 4-bit model meets (10 bytes) is said, as run says it, and listed
    with pytest.warns(UserWarning, match=r"^constraints not met: .*max_size_bytes: limit 10, measured \d+"):
        result = torchslim.compress(model, data, recipe, constraints={"max_metric_drop": 0.5, "max_size_bytes": 10},
                                    out=tmp_path / "run", threads=1)
    assert list(result.unmet) == ["max_size_bytes"] and result.unmet["max_size_bytes"]["measured"] > 10
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
    (None, {"quantize": {"method": "kmeans", "bits": 4}}, "recipe"),  # one stage, not in a list
])
def test_bad_input_names_the_field(trained, data, recipe, field):
    model, splits = trained
    data = (splits.train, splits.val, splits.test) if data is None else data
    with pytest.raises(ConfigError) as err:
        torchslim.compress(model, data, recipe)
    assert err.value.field == field


def test_a_search_folder_is_not_compressed_into(trained, tmp_path):
    model, splits = trained
    (tmp_path / "study.json").write_text('{"study": "s"}')
    with pytest.raises(ConfigError, match=r"^out: .* holds a search \(study.json\): compress into another folder$"):
        torchslim.compress(model, (splits.train, splits.val, splits.test), [{"quantize": {"method": "kmeans"}}],
                           out=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["study.json"]


def test_labels_must_be_integer_classes(trained):
    from torchslim.api import _tensors

    model, splits = trained
    x, y = splits.train.tensors
    with pytest.raises(ConfigError, match="data.train: must hold float inputs and one integer class label"):
        torchslim.compress(model, (TensorDataset(x, y.float() + 0.5), splits.val, splits.test),
                           [{"quantize": {"method": "kmeans", "bits": 4}}])
    # whole-valued float labels are classes, as an npz file's are
    assert torch.equal(_tensors(TensorDataset(x, y.float()), "train").tensors[1], y.long())
    with pytest.raises(ConfigError, match="^data.val: is empty$"):
        _tensors(TensorDataset(x[:0], y[:0]), "val")
    with pytest.raises(ConfigError, match=r"^data.test: must be a dataset or DataLoader .* got a pair of arrays"):
        torchslim.compress(model, (splits.train, splits.val, (x.numpy(), y.numpy())),
                           [{"quantize": {"method": "kmeans", "bits": 4}}])


FACTORY = """
from torch import nn


def build(input_shape, num_classes, hidden=32):
    return nn.Sequential(nn.Linear(input_shape[0], hidden), nn.GELU(), nn.Linear(hidden, num_classes))
"""

DOMAIN = """
name: table
task: tabular-classification
data: {source: "npz:table.npz", val_fraction: 0.1, seed: 0}
model: {factory: "tablemodels:build", weights: weights.safetensors}
metric: accuracy
constraints: {max_metric_drop: 0.05}
"""

STAGES = [{"prune": {"method": "magnitude", "sparsity": 0.6, "finetune": {"epochs": 2, "lr": 0.001}}},
          {"quantize": {"method": "kmeans", "bits": 4}}]


def test_compress_writes_the_tensors_that_run_writes_for_the_equivalent_yaml(tmp_path, one_thread, monkeypatch):
    """The same model, splits, stages, seed and threads through the API and through ``torchslim run``."""
    import numpy as np
    import yaml
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    from cli_support import invoke
    from torchslim.artifact import load_artifact

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    np.savez(tmp_path / "table.npz", x=x[:1400], y=y[:1400], x_test=x[1400:], y_test=y[1400:])
    (tmp_path / "tablemodels.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    from tablemodels import build

    model = build((64,), 10)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    for _ in range(5):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    (tmp_path / "domain.yaml").write_text(DOMAIN)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"domain": "domain.yaml", "seed": 0, "stages": STAGES}))
    proc = invoke("run", "recipe.yaml", "--out", "cli", "--threads", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    splits = load_splits(DataSpec(source="npz:table.npz", val_fraction=0.1, seed=0), base_dir=tmp_path)
    result = torchslim.compress(model, (splits.train, splits.val, splits.test), STAGES,
                                constraints={"max_metric_drop": 0.05}, out=tmp_path / "api", threads=1, seed=0)
    by_cli, by_api = read_manifest(tmp_path / "cli" / "artifact"), read_manifest(tmp_path / "api" / "artifact")
    assert by_api["payloads"]["tensors"] == by_cli["payloads"]["tensors"]  # the tensor file, byte for byte
    provenance = {"architecture", "baseline", "data", "domain", "preprocessing"}  # where model and data came from
    assert {k for k in by_cli if by_cli[k] != by_api[k]} <= provenance
    # the baseline differs only in its architecture record and so in its manifest's length
    assert {k for k in by_cli["baseline"] if by_cli["baseline"][k] != by_api["baseline"][k]} <= {"architecture",
                                                                                                 "size_bytes"}
    assert [by_cli["data"][k] for k in ("train", "val", "test", "seed")] == \
        [by_api["data"][k] for k in ("train", "val", "test", "seed")]
    cli_metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert result.metrics["value"] == cli_metrics["value"]

    def decisions(metrics):  # what each stage did and measured, leaving out bytes (they include the manifest)
        return [{k: v for k, v in stage.items() if "size" not in k and k != "compression_ratio"}
                for stage in metrics["stages"]]

    assert decisions(result.metrics) == decisions(cli_metrics)
    reloaded, _ = load_artifact(tmp_path / "cli" / "artifact", trust_code=True, code_dir=tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(splits.test.tensors[0]), result.model(splits.test.tensors[0]))
