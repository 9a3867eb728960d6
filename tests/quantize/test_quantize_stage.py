"""The quantize recipe stage through the CLI: bad input, metric-drop budget, end-to-end runs."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from torchslim._errors import ConfigError
from torchslim.cli import cli
from torchslim.domain import Constraints
from torchslim.quantize.stage import QuantizeStage, metric_drop_budget, parse_quantize_stage

requires_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
DIGITS = str(ROOT / "domains" / "digits.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_recipe(tmp_path, stages, domain=DIGITS, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"domain": domain, "seed": 0, "stages": stages}))
    return path


@pytest.mark.parametrize("quantize, field", [
    ({"method": "weight", "bits": 9}, "stages[1].quantize.bits"),
    ({"method": "kmeans", "bits": 1}, "stages[1].quantize.bits"),
    ({"method": "static", "calibration": {"observer": "kl"}}, "stages[1].quantize.calibration.observer"),
    ({"method": "static", "calibration": {"batches": 0}}, "stages[1].quantize.calibration.batches"),
    ({"method": "weight", "granularity": "group", "group_size": 7}, "stages[1].quantize.group_size"),
    ({"method": "weight", "ignore": ["fc9"]}, "stages[1].quantize.ignore[0]"),  # as pruning names it
    ({"method": "weight", "bitz": 4}, "stages[1].quantize.bitz"),
])
def test_bad_stage_is_one_line_naming_the_field_and_exit_2(tmp_path, quantize, field):
    recipe = _write_recipe(tmp_path, [{"train": {"epochs": 1, "lr": 0.001}}, {"quantize": quantize}])
    result = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {recipe}: {field}: "), lines
    assert not (tmp_path / "out" / "metrics.json").exists()  # refused before any training


def _ctx(constraints):
    return SimpleNamespace(domain=SimpleNamespace(constraints=Constraints(**constraints)), baseline=object(),
                           splits=SimpleNamespace(val=None), metric="accuracy")


@pytest.mark.parametrize("body, constraints, before, expected", [
    ({"method": "weight", "max_metric_drop": 0.02}, {"max_metric_drop": 0.01}, 0.9, (0.02, "stage")),
    ({"method": "weight", "max_metric_drop": None}, {"max_metric_drop": 0.01}, 0.9, (None, "none")),
    ({"method": "static"}, {"max_metric_drop": 0.01}, 0.9, (0.01, "domain")),
    ({"method": "weight"}, {"max_metric_drop": 0.01}, 0.895, (0.005, "domain")),  # earlier stages spent 0.005
    ({"method": "weight"}, {"max_metric_drop": 0.01}, 0.85, (0.0, "domain")),
    ({"method": "weight"}, {"min_metric": 0.8}, 0.85, (0.05, "domain")),
    ({"method": "qat", "bits": 4}, {"max_metric_drop": 0.01}, 0.9, (None, "none")),  # fine-tunes after probes
    ({"method": "kmeans", "finetune": {"epochs": 3}}, {"max_metric_drop": 0.01}, 0.9, (None, "none")),
    ({"method": "kmeans"}, {"max_metric_drop": 0.01}, 0.9, (0.01, "domain")),
    ({"method": "weight"}, {}, 0.9, (None, "none")),
])
def test_metric_drop_budget(monkeypatch, body, constraints, before, expected):
    monkeypatch.setattr("torchslim.evaluate.compute_metric", lambda *a, **k: 0.9)  # the baseline's val metric
    stage = parse_quantize_stage(body, prefix="stages[1].quantize", source="r.yaml")
    budget, source = metric_drop_budget(_ctx(constraints), stage, before)
    assert source == expected[1]
    assert budget == pytest.approx(expected[0]) if expected[0] is not None else budget is None


def test_stage_dump_keeps_the_keys_as_written():
    stage = parse_quantize_stage({"method": "kmeans", "bits": 4}, prefix="p", source=None)
    assert isinstance(stage, QuantizeStage) and "max_metric_drop" not in stage.model_dump(mode="json")
    assert parse_quantize_stage(stage.model_dump(), prefix="p", source=None) == stage
    with pytest.raises(ConfigError, match=r"^r.yaml: stages\[2\].quantize.method: unknown quantization method"):
        parse_quantize_stage({"method": "gptq"}, prefix="stages[2].quantize", source="r.yaml")


@requires_ort
def test_static_int8_run_measures_ort_and_exports_the_int8_graph(tmp_path):
    from torchslim.domain import load_domain
    from torchslim.export.cpu import int8_products_saturate
    from torchslim.runner import evaluate_artifact

    out = tmp_path / "run"
    recipe = ROOT / "recipes" / "digits" / "quant_static_lenet5.yaml"
    result = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(out), "--set", "stages.0.train.epochs=8"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runtime"] == "onnxruntime"
    record = metrics["stages"][1]
    assert record["method"] == "static" and record["max_metric_drop_from"] == "domain"
    # reduce_range: auto takes [-64, 64] weights exactly where the CPU's int8 products would overflow, and says so
    assert record["reduce_range"] is int8_products_saturate()
    assert ("int8 weights in [-64, 64] (reduce_range)" in result.output) is int8_products_saturate()
    assert record["max_metric_drop"] == 0.003  # the first compressing stage has the domain's whole budget
    assert sorted(record["layers_quantized"] + record["kept_fp32"]) == ["conv1", "conv2", "fc1", "fc2"]
    assert record["kept_fp32"] == record["fallback"]  # layers kept in fp32 only by the fallback
    # every quantized layer runs on an integer kernel in ORT, every kept one in float
    convs = sum(n.startswith("conv") for n in record["layers_quantized"])
    assert metrics["int8_kernels"] == {"QGemm": 4 - len(record["kept_fp32"]) - convs, "QLinearConv": convs}
    assert set(metrics["cpu_features"]) >= {"avx512_vnni", "avx_vnni", "amx_int8", "vnni", "machine"}
    assert metrics["params"] == metrics["baseline_params"]  # int8 codes still count one parameter per weight
    assert record["weight_bytes_quantized"] < 0.27 * record["weight_bytes_fp32"]
    assert "ONNX Runtime ran integer kernels: QGemm ×" in (out / "report.md").read_text()
    # ReLU and max-pooling run on the int8 values: no float op between the int8 ones, unless the fallback kept
    # a layer float
    assert bool(metrics["float_ops_in_int8"]) is bool(record["kept_fp32"]), metrics["float_ops_in_int8"]
    assert ("No float op runs between them." in (out / "report.md").read_text()) is not record["kept_fp32"]
    # the baseline's fp32 export was timed in ORT in the same rounds: the speed-up over torch splits into the
    # runtime's share and the compression's (each a median of the rounds' ratios, so their product is near it)
    paired = metrics["latency_spread"]["batch_64"]
    assert set(metrics["baseline_runtime_latency_ms"]) == {"batch_1", "batch_64"}
    assert 0.7 < paired["runtime_ratio"] * paired["compression_ratio"] / paired["ratio"] < 1.4
    assert "| baseline in ONNX Runtime fp32, batch 64 |" in (out / "report.md").read_text()
    # each ORT session was timed on the thread count it runs fastest on: one, or all torch uses
    assert set(metrics["ort_threads"]) == {"compressed", "baseline"}
    assert set(metrics["ort_threads"].values()) <= {1, metrics["threads"]}
    assert f"Timed on {metrics['ort_threads']['compressed']} intra-op thread(s)" in (out / "report.md").read_text()

    # the artifact stores the int8 weights once (its codes); the int8 graph is stored without them, the exported
    # file is that graph with the weights put back, and `torchslim export` writes the same bytes
    from torchslim.artifact import load_artifact
    from torchslim.quantize._layout import int8_onnx_of

    stored = (out / "artifact" / "model.int8.onnx.zst").read_bytes()
    int8 = (out / "model.onnx").read_bytes()
    assert len(stored) < 0.25 * len(int8) and int8_onnx_of(load_artifact(out / "artifact")[0]) == int8
    assert metrics["compression_ratio"] > 3.2  # int8 codes stored once: ~4x, less the graph, biases and scales
    result = CliRunner().invoke(cli, ["export", str(out / "artifact"), "--format", "onnx",
                                      "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 0 and "int8 model" in result.output
    assert (tmp_path / "x.onnx").read_bytes() == int8

    # ORT's int8 kernels and the torch simulation agree on the test split within 0.3 points
    domain = load_domain(yaml.safe_load(recipe.read_text())["domain"], source=str(recipe))
    in_ort = evaluate_artifact(out / "artifact", domain)
    in_torch = evaluate_artifact(out / "artifact", domain.model_copy(update={"runtime": "torch"}))
    assert in_ort["value"] == metrics["value"] and in_torch["int8_kernels"] is None
    assert "baseline_runtime_latency_ms" in in_ort and "baseline_runtime_latency_ms" not in in_torch
    assert abs(in_ort["value"] - in_torch["value"]) <= 0.003, (in_ort["value"], in_torch["value"])
    assert metrics["value"] >= 0.9


@requires_ort
def test_kmeans_run_compresses_and_exports_fp32_onnx(tmp_path):
    from torchslim.export import quantized_kernels

    recipe = _write_recipe(tmp_path, [{"train": {"epochs": 15, "lr": 0.001, "batch_size": 32}},
                                      {"quantize": {"method": "kmeans", "bits": 4,
                                                    "finetune": {"epochs": 2, "lr": 0.0001}}},
                                      {"export": {"formats": ["torchslim", "onnx"]}}])
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["compression_ratio"] >= 6
    assert metrics["baseline_value"] - metrics["value"] <= 0.03
    assert metrics["int8_kernels"] is None  # runtime torch: ORT did not run
    record = metrics["stages"][1]
    assert record["max_metric_drop_from"] == "none" and record["int8_onnx"] is False
    assert 7.5 < record["weight_bytes_fp32"] / record["weight_bytes_quantized"] < 8  # 4-bit indices + codebook
    assert quantized_kernels(out / "model.onnx") == {}  # no int8 graph: an fp32 export of the dequantized model
    assert not (out / "artifact" / "model.int8.onnx.zst").exists()


@pytest.mark.parametrize("recipe", ["digits/quant_static_lenet5.yaml", "digits/quant_kmeans.yaml",
                                    "mnist1d/qat_4bit.yaml"])
def test_shipped_quantize_recipes_pass_check(recipe):
    result = CliRunner().invoke(cli, ["check", str(ROOT / "recipes" / recipe)])
    assert result.exit_code == 0 and result.output.startswith("ok: "), result.output
