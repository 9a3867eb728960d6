"""The export recipe stage and the ``torchslim export`` command."""

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from torchslim._errors import ConfigError
from torchslim.cli import cli
from torchslim.stages import STAGES

requires_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")

DIGITS = str(Path(__file__).resolve().parents[2] / "domains" / "digits.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_export_stage_config():
    handler = STAGES["export"]
    assert handler.compresses is False
    assert handler.parse({"formats": ["torchslim", "onnx"]}, prefix="p", source=None).formats == ("torchslim", "onnx")
    assert handler.parse({}, prefix="p", source=None).formats == ("torchslim",)
    for body, message in [({"formats": ["tflite"]}, "stages[2].export.formats[0]"),
                          ({"formats": ["onnx", "onnx"]}, "stages[2].export.formats"),
                          ({"formats": []}, "stages[2].export.formats"),
                          ({"format": ["onnx"]}, "stages[2].export.format")]:
        with pytest.raises(ConfigError) as err:
            handler.parse(body, prefix="stages[2].export", source="r.yaml")
        assert err.value.field == message, str(err.value)


@requires_ort
def test_weight_only_run_exports_fp32_onnx_that_matches_the_artifact(tmp_path):
    import torchslim
    from torchslim.export import OrtSession, quantized_kernels

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"domain": DIGITS, "stages": [
        {"train": {"epochs": 2, "lr": 0.001}}, {"export": {"formats": ["onnx"]}},
        {"quantize": {"method": "weight", "bits": 4, "granularity": "group", "group_size": 4}}]}))
    result = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    onnx_file = tmp_path / "run" / "model.onnx"  # written from the final artifact, wherever the stage stands
    assert quantized_kernels(onnx_file) == {}
    x = torch.rand(7, 1, 8, 8)
    module = torchslim.load(tmp_path / "run" / "artifact")
    assert float((OrtSession(onnx_file)(x) - module(x).detach()).abs().max()) < 1e-4
    # what the outputs and inputs mean travels with the model, in either runtime
    session = torchslim.load(tmp_path / "run" / "artifact", runtime="onnxruntime")
    assert module.labels == session.labels == [str(k) for k in range(10)]
    assert module.preprocessing == session.preprocessing and "digits" in module.preprocessing
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "run" / "artifact"), "--out", str(tmp_path / "b.onnx")])
    assert result.exit_code == 0 and "fp32 export" in result.output
    assert (tmp_path / "b.onnx").read_bytes() == onnx_file.read_bytes()  # the export is deterministic


def test_export_command_refuses_a_folder_that_is_not_an_artifact(tmp_path):
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "not a torchslim artifact" in result.stderr
    assert not (tmp_path / "m.onnx").exists()
