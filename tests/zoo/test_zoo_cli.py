"""End to end through the CLI with a factory domain: train -> quantize -> export on zoo models, then ``eval``
reproduces the recorded metric from the artifact alone."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from cli_support import run_recipe_in

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")]

CODE = Path(__file__).resolve().parent / "zoo_models.py"

DOMAIN = """
name: zoo-{name}
task: image-classification
data: {{source: digits, test_fraction: 0.2, val_fraction: 0.1, seed: 0}}
model: {{factory: "zoo_models:build_{name}", kwargs: {kwargs}}}
metric: accuracy
runtime: {runtime}
"""

RECIPE = """
domain: domain.yaml
seed: 0
stages:
  - train: {{epochs: 3, lr: 0.003, batch_size: 32}}
  - quantize: {quantize}
  - export: {{formats: [torchslim, onnx]}}
"""


def _run(folder: Path, name: str, kwargs: str, runtime: str, quantize: str):
    shutil.copy(CODE, folder / "zoo_models.py")  # the factory module lives beside the domain file
    run_recipe_in(folder, DOMAIN.format(name=name, kwargs=kwargs, runtime=runtime), RECIPE.format(quantize=quantize))
    return json.loads((folder / "out" / "metrics.json").read_text())


def _eval_reproduces(folder: Path, cli, metrics: dict) -> dict:
    proc = cli("eval", "out/artifact", "--domain", "domain.yaml", "--json", "--trust-code", "--code-dir", ".",
               cwd=folder)
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads(proc.stdout)
    assert evaluated["value"] == metrics["value"]
    assert evaluated["size_bytes"] == metrics["size_bytes"]
    return evaluated


def test_residual_cnn_static_int8_run_and_eval(tmp_path, cli):
    metrics = _run(tmp_path, "resnet", "{}", "onnxruntime",
                   "{method: static, bits: 8, calibration: {batches: 4}}")
    # folded BatchNorm: the factory-built model is rebuilt to the stored structure, in the run and in eval
    assert metrics["int8_kernels"] and metrics["value"] >= metrics["baseline_value"] - 0.02
    assert (tmp_path / "out" / "model.onnx").is_file()
    _eval_reproduces(tmp_path, cli, metrics)


def test_transformer_dynamic_int8_in_onnxruntime_run_and_eval(tmp_path, cli):
    metrics = _run(tmp_path, "transformer", "{layers: 1}", "onnxruntime", "{method: dynamic, bits: 8}")
    assert metrics["runtime"] == "onnxruntime" and metrics["int8_kernels"]  # ORT ran integer MatMuls
    assert metrics["value"] >= metrics["baseline_value"] - 0.01
    assert (tmp_path / "out" / "model.onnx").is_file()
    _eval_reproduces(tmp_path, cli, metrics)


def test_conv1d_kmeans_run_and_eval(tmp_path, cli):
    metrics = _run(tmp_path, "conv1d", "{}", "torch", "{method: kmeans, bits: 4}")
    assert metrics["compression_ratio"] >= 6.0 and metrics["value"] >= metrics["baseline_value"] - 0.02
    _eval_reproduces(tmp_path, cli, metrics)
