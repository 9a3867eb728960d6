from pathlib import Path

import pytest

from torchslim._errors import ConfigError
from torchslim.domain import load_domain

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_digits_domain_has_documented_defaults():
    d = load_domain(ROOT / "domains" / "digits.yaml")
    assert d.name == "digits" and d.task == "image-classification"
    assert d.data.source == "digits" and d.data.test_fraction == 0.2 and d.data.val_fraction == 0.1
    assert d.model.name == "lenet300_100" and d.metric == "accuracy" and d.runtime == "torch"


def test_minimal_domain_fills_defaults():
    d = load_domain({"name": "x", "task": "image-classification", "data": {"source": "digits"},
                     "model": {"name": "lenet5"}})
    assert d.metric == "accuracy" and d.runtime == "torch" and d.data.seed == 0
    assert d.constraints.max_size_bytes is None


@pytest.mark.parametrize("patch, field, words", [
    ({"extra": 1}, "extra", "unknown key"),
    ({"task": "regression"}, "task", "must be one of"),
    ({"data": {"source": "digits", "test_fraction": 1.5}}, "data.test_fraction", "must be <"),
    ({"model": {}}, "model", "exactly one of"),
    ({"model": {"factory": "nocolon"}}, "model.factory", "package.module:function"),
    ({"model": {"factory": ".relative:build"}}, "model.factory", "no leading dots"),
    ({"data": {"source": "digits", "seed": 2**32}}, "data.seed", "must be <="),
    ({"data": {"source": "digits", "test_fraction": 0}}, "data.test_fraction", "must be positive"),  # no integer
    ({"metric": "f1"}, "metric", "must be one of accuracy, top5, cosine, got 'f1'"),
    ({"constraints": {"max_metric_drop": 0.01, "min_metric": 0.9}}, "constraints", "not both"),
    ({"constraints": {"max_size_bytes": -3}}, "constraints.max_size_bytes", "positive"),
    ({"constraints": {"max_latency_ms": {"batch_8": 1.0}}}, "constraints.max_latency_ms.batch_8", "unknown key"),
    ({"constraints": {"min_speedup": {"batch_64": 0.5}}}, "constraints.min_speedup.batch_64", ">= 1"),
    ({"constraints": {"min_speedup": {"batch_2": 2}}}, "constraints.min_speedup.batch_2", "unknown key"),
    ({"constraints": {"min_speedup": {"batch_32": 2}}}, "constraints.min_speedup.batch_32",
     "did you mean 'batch_1' or 'batch_64'?"),  # two near misses: both named
    ({"constraints": {"min_speedup": {"batch_1": float("inf")}}}, "constraints.min_speedup.batch_1", "finite"),
    ({"constraints": {"min_compression_ratio": 0.9}}, "constraints.min_compression_ratio", ">= 1"),
    ({"constraints": {"min_compression_ratio": 0}}, "constraints.min_compression_ratio", ">= 1"),
    ({"constraints": {"min_compression_ratio": float("nan")}}, "constraints.min_compression_ratio", "finite"),
])
def test_bad_domain_names_the_field(patch, field, words):
    spec = {"name": "x", "task": "image-classification", "data": {"source": "digits"},
            "model": {"name": "lenet5"}, **patch}
    with pytest.raises(ConfigError) as err:
        load_domain(spec, source="d.yaml")
    assert err.value.field == field and words in err.value.message
    assert str(err.value).startswith(f"d.yaml: {field}: ")


@pytest.mark.parametrize("missing", ["name", "task", "data", "model"])
def test_required_keys(missing):
    spec = {"name": "x", "task": "image-classification", "data": {"source": "digits"}, "model": {"name": "lenet5"}}
    del spec[missing]
    with pytest.raises(ConfigError, match=f"{missing}: required"):
        load_domain(spec)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_domain(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML at line"):
        load_domain(bad)


def test_relative_paths_resolve_against_the_domain_file(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "d.yaml"
    f.write_text("name: x\ntask: image-classification\ndata: {source: 'npz:data.npz'}\nmodel: {name: lenet5}\n")
    d = load_domain(f)
    assert d.resolve("data.npz") == tmp_path / "sub" / "data.npz"
