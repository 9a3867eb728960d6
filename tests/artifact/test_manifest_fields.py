"""A resealed manifest with malformed fields: every reader refuses it with one line naming the artifact and the
field (the fuzzing campaign's cases: a huge integer in the header, metrics as a string, a bad input shape...)."""

import pytest
import torch
from click.testing import CliRunner

from artifact_support import rewrite_manifest
from torchslim.artifact import ArtifactError, describe_artifact, load_artifact, read_manifest, save_artifact
from torchslim.artifact._format import update_manifest
from torchslim.cli import cli

ARCH = {"name": "lenet300_100", "kwargs": {"hidden1": 16, "hidden2": 8}}
# what a run records (runner._manifest_extra and finish), so every field is there to be broken
EXTRA = {"input_shape": [1, 8, 8], "labels": [str(i) for i in range(10)], "preprocessing": "pixel / 16",
         "data": {"source": "digits", "seed": 0, "train": 1257}, "seed": 0,
         "domain": {"name": "digits", "task": "image-classification", "metric": "accuracy", "runtime": "torch",
                    "data": {"source": "digits"}, "model": {"name": "lenet300_100"}, "constraints": {}},
         "recipe": {"seed": 0, "stages": [{"train": {"epochs": 1}}]},
         "metrics": {"metric": "accuracy", "value": 0.9},
         "baseline": {"architecture": ARCH, "value": 0.91, "params": 1234, "size_bytes": 5678}}


@pytest.fixture
def artifact(tmp_path):
    from torchslim.models import LeNet300100

    torch.manual_seed(0)
    return save_artifact(LeNet300100(hidden1=16, hidden2=8).eval(), tmp_path / "a", architecture=ARCH, extra=EXTRA)


def _names_artifact_and_field(line, path, field):
    """One line: the artifact's path (shortened from its front when long), then what is wrong with the field."""
    where = line.split(": ", 1)[0]
    assert "\n" not in line and str(path).endswith(where.lstrip("…")) and field in line, line


def _one_line_refusal(call, path, field):
    with pytest.raises(ArtifactError) as err:
        call()
    _names_artifact_and_field(str(err.value), path, field)


def _tensor_shape(value):
    def edit(m):
        m["tensors"]["fc1.weight"]["shape"] = value
    return edit


@pytest.mark.parametrize("keys, field", [
    ({"metrics": "high"}, "manifest field metrics: must be a mapping"),
    ({"metrics": {"metric": "accuracy", "value": "high"}}, "manifest field metrics.value: must be a number"),
    ({"metrics": {"metric": "accuracy", "value": 10**400}}, "manifest field metrics.value: must be a number"),
    ({"input_shape": "abc"}, "manifest field input_shape: must be a list"),
    ({"input_shape": [-1, 8, 8]}, "manifest field input_shape[0]: must be >= 1"),
    ({"input_shape": [1, "8", 8]}, "manifest field input_shape[1]: must be an integer"),
    ({"input_shape": [10**6, 10**6]}, "manifest field input_shape: describes more than"),
    ({"labels": 5}, "manifest field labels: must be a list"),
    ({"labels": [0, 1]}, "manifest field labels[0]: must be a string"),
    ({"domain": {"name": 5}}, "manifest field domain.name: must be a string"),
    ({"domain": "digits"}, "manifest field domain: must be a mapping"),
    ({"versions": [1, 2]}, "manifest field versions: must be a mapping"),
    ({"structure": {"fold": "../../x"}}, "manifest field structure.fold: unknown key"),
    ({"structure": {"folded_batchnorm": ["bn"]}}, "manifest field structure.folded_batchnorm: must be a mapping"),
    ({"entropy": "lzma"}, "manifest field entropy: must be one of payload, got 'lzma'"),
    ({"seed": True}, "manifest field seed: must be an integer"),
    ({"recipe": {"seed": 0, "stages": "train"}}, "manifest field recipe.stages: must be a list"),
    ({"architecture": "lenet300_100"}, "manifest field architecture: must be a mapping"),
    ({"architecture": {"kwargs": {}}}, "manifest field architecture: must give exactly one of"),
    ({"architecture": {"name": "lenet300_100", "kwargs": []}}, "manifest field architecture.kwargs: must be a mapping"),
    ({"baseline": {**EXTRA["baseline"], "value": None}}, "manifest field baseline.value: must be a number"),
    ({"baseline": {"value": 0.9}}, "the manifest has no baseline.architecture"),
    ({"quantization": {"layers": {"fc1": {"bits": 40}}}}, "manifest field quantization.layers.fc1.bits: must be <= 8"),
    ({"quantization": {"layers": [], "int8_onnx": 5}}, "manifest field quantization.layers: must be a mapping"),
    ({"text": {"tokenizer": 5}}, "manifest field text.tokenizer: must be a string"),
    # null where a writer never puts one: a reader would index it
    ({"metrics": None}, "manifest field metrics: must be a mapping"),
    ({"quantization": None}, "manifest field quantization: must be a mapping"),
    ({"quantization": {"layers": {"fc1": {"shape": [16, 64], "bits": 4, "encoding": "affine",
                                          "granularity": {"type": "channel", "axis": 5}}}}},
     "manifest field quantization.layers.fc1: granularity.axis 5 is no axis of a weight of shape [16, 64]"),
    ({"quantization": {"layers": {"fc1": {"shape": [], "bits": 4}}}},
     "manifest field quantization.layers.fc1.shape: must hold at least 2 item(s)"),
    ({"quantization": {"layers": {}, "int8_onnx_weights": {"initializers": {"w": {"transpose": False}},
                                                           "sha256": ""}}},
     "manifest field quantization.int8_onnx_weights.initializers.w: must give exactly one of 'layer', 'tensor', "
     "'rnn' or 'rnn_codes'"),
    ({"quantization": {"layers": {}, "int8_onnx_weights": {
        "initializers": {"w": {"rnn_codes": "lstm", "rnn_layer": 0, "part": "B"}}, "sha256": ""}}},
     "manifest field quantization.int8_onnx_weights.initializers.w: an int8 LSTM's codes are its matrices: 'part' W "
     "or R"),
])
def test_a_malformed_field_is_one_line_naming_it_for_every_reader(artifact, tmp_path, keys, field):
    update_manifest(artifact, **keys)  # resealed: the seal holds, only the content is wrong
    for call in (lambda: read_manifest(artifact), lambda: describe_artifact(artifact),
                 lambda: load_artifact(artifact)):
        _one_line_refusal(call, artifact, field)
    runner = CliRunner()
    for args in (["inspect", str(artifact)], ["export", str(artifact), "--out", str(tmp_path / "m.onnx")]):
        result = runner.invoke(cli, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        _names_artifact_and_field(lines[0].removeprefix("error: "), artifact, field)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("edit, field", [
    (_tensor_shape("300x64"), "manifest field tensors.fc1.weight.shape: must be a list"),
    (_tensor_shape([-16, 64]), "manifest field tensors.fc1.weight.shape[0]: must be >= 0"),
    (lambda m: m["tensors"]["fc1.weight"].update(bytes="4096"), "manifest field tensors.fc1.weight.bytes: must be "
                                                                 "an integer"),
    (lambda m: m.pop("tensors"), "the manifest has no tensors"),
    (lambda m: m.update(version=7), "model.safetensors repeats the header's format or version"),
])
def test_a_malformed_tensor_table_is_one_line_naming_the_field(artifact, edit, field):
    rewrite_manifest(artifact, edit)
    for call in (lambda: read_manifest(artifact), lambda: describe_artifact(artifact),
                 lambda: load_artifact(artifact)):
        _one_line_refusal(call, artifact, field)


def test_a_header_integer_too_long_for_python_is_one_line(artifact):
    (artifact / "manifest.json").write_text('{"format":"torchslim-artifact","manifest":"model.safetensors",'
                                            '"version":' + "9" * 5000 + "}")
    field = "manifest.json is not a torchslim manifest"
    _one_line_refusal(lambda: read_manifest(artifact), artifact, field)
    result = CliRunner().invoke(cli, ["inspect", str(artifact)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and field in lines[0], result.output


def test_a_well_formed_manifest_is_handed_on_as_it_was_written(artifact):
    manifest = read_manifest(artifact)
    assert {k: manifest[k] for k in EXTRA} == EXTRA  # nothing coerced, nothing filled in
    assert manifest["architecture"] == ARCH and list(manifest)[:2] == ["format", "version"]
    model, _ = load_artifact(artifact)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    # further keys a caller records pass, as do metrics beyond metric and value (the text runs' spearman)
    update_manifest(artifact, notes={"by": "me"}, metrics={"metric": "cosine", "value": 0.99, "spearman": 0.9})
    assert read_manifest(artifact)["notes"] == {"by": "me"}


def test_well_formed_fields_that_do_not_fit_the_model_are_one_line(artifact, tmp_path):
    """An input shape the model cannot take, and int8 weights that do not rebuild the sealed graph: export and
    ONNX Runtime refuse them in one line; inspect shows a metrics record without a value."""
    from torchslim.export.artifact import artifact_onnx

    runner = CliRunner()
    update_manifest(artifact, metrics={"value": 0.5})  # a caller's record: no metric name
    result = runner.invoke(cli, ["inspect", str(artifact)])
    assert result.exit_code == 0 and "v10, architecture" in result.output
    update_manifest(artifact, input_shape=[3, 8, 8])  # LeNet-300-100 takes 64 values
    with pytest.raises(ArtifactError, match=r"its recorded input_shape \[3, 8, 8\] does not fit the model: Runtime"):
        artifact_onnx(artifact)
    result = runner.invoke(cli, ["export", str(artifact), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_shared_int8_weights_that_do_not_rebuild_the_graph_are_one_line(tmp_path):
    from torchslim.export.artifact import artifact_onnx
    from torchslim.models import LeNet300100
    from torchslim.quantize import DynamicConfig, quantize_

    torch.manual_seed(0)
    model = LeNet300100(hidden1=16, hidden2=8).eval()
    quantize_(model, DynamicConfig(), calibration=[(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))])
    path = save_artifact(model, tmp_path / "q", architecture=ARCH, extra={"input_shape": [1, 8, 8]})
    quantization = read_manifest(path)["quantization"]
    first = next(iter(quantization["int8_onnx_weights"]["initializers"]))
    quantization["int8_onnx_weights"]["initializers"][first] = {"tensor": "fc3.bias", "transpose": False}
    update_manifest(path, quantization=quantization)
    with pytest.raises(ArtifactError, match="its int8 model cannot be rebuilt from the stored tensors"):
        artifact_onnx(path)
