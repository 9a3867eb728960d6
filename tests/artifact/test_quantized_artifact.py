"""Quantized models through the artifact: integer payloads, exact round trips, byte-identical re-saves."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from artifact_support import rewrite_manifest
from torchslim.artifact import ArtifactError, describe_artifact, load_artifact, read_manifest, save_artifact
from torchslim.evaluate import count_params, size_bytes
from torchslim.models import LeNet300100, LeNet5
from torchslim.quantize import (CalibrationConfig, DynamicConfig, FinetuneConfig, KMeansConfig, QATConfig,
                                StaticConfig, WeightOnlyConfig, quantize_)

requires_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")

ARCH = {"name": "lenet5", "kwargs": {"width": 0.25}}


def _finetune(model, epochs, lr):
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


METHODS = {
    "weight2": (WeightOnlyConfig(bits=2), False),
    "weight4-group": (WeightOnlyConfig(bits=4, granularity="group", group_size=8, ignore=["conv1"]), False),
    "weight8-tensor": (WeightOnlyConfig(bits=8, granularity="tensor"), False),
    "kmeans3": (KMeansConfig(bits=3, finetune=FinetuneConfig(epochs=2, lr=1e-2)), False),
    "static": (StaticConfig(calibration=CalibrationConfig(batches=2)), True),
    "dynamic": (DynamicConfig(), True),
    "qat4": (QATConfig(bits=4, finetune=FinetuneConfig(epochs=2, lr=1e-2)), False),
    "qat8": (QATConfig(bits=8, finetune=FinetuneConfig(epochs=2, lr=1e-3), calibration=CalibrationConfig(batches=2)),
             True),
}


def _quantized(method):
    torch.manual_seed(0)
    model = LeNet5(width=0.25).eval()
    calibration = [torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    config, _ = METHODS[method]
    quantize_(model, config, calibration=calibration, finetune=_finetune)
    return model


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("method", [pytest.param(m, marks=requires_ort) if int8 else m
                                    for m, (_, int8) in METHODS.items()])
def test_round_trip_is_exact_and_resave_is_byte_identical(tmp_path, method):
    model = _quantized(method)
    x = torch.rand(9, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    path = save_artifact(model, tmp_path / "a", architecture=ARCH, extra={"input_shape": [1, 8, 8]})
    loaded, manifest = load_artifact(path)
    assert torch.equal(loaded(x), model(x))

    # same model -> same bytes; and the reloaded model saves to the same bytes again
    again = save_artifact(model, tmp_path / "b", architecture=ARCH, extra={"input_shape": [1, 8, 8]})
    resaved = save_artifact(loaded, tmp_path / "c", architecture=ARCH, extra={"input_shape": [1, 8, 8]})
    assert _files(path) == _files(again) == _files(resaved)

    layers = manifest["quantization"]["layers"]
    assert set(layers) == {n for n, m in model.named_modules() if type(m).__name__ == "QuantizedLayer"}
    assert layers["fc1"]["shape"] == list(model.fc1.weight.shape) and layers["fc1"]["kind"] == "Linear"
    # no float copy of a quantized weight is stored: only codes, scales, zero points or a codebook
    assert not any(k.endswith(".weight") and k.split(".")[0] in layers for k in manifest["tensors"])
    assert len((path / "manifest.json").read_bytes()) < 4000  # compact: no per-element data
    has_int8 = METHODS[method][1]
    assert ("model.int8.onnx.zst" in manifest["payloads"]) == has_int8 == (path / "model.int8.onnx.zst").is_file()
    assert size_bytes(path) == sum(len(b) for b in _files(path).values())
    # inspect counts parameters as the run does: not an activation quantizer's observed range
    assert describe_artifact(path)["totals"]["params"] == count_params(loaded)[0]


def test_packed_bits_are_what_is_stored(tmp_path):
    model = _quantized("weight2")
    path = save_artifact(model, tmp_path / "a", architecture=ARCH)
    manifest = read_manifest(path)
    entry = manifest["tensors"]["fc1.weight_source.packed"]
    assert entry["encoding"] == "packed2" and entry["dtype"] == "uint8"
    assert entry["shape"] == [model.fc1.weight.numel() // 4]  # four 2-bit codes per byte
    assert manifest["quantization"]["layers"]["fc1"]["granularity"] == {"type": "channel", "axis": 0}


def test_pruned_and_quantized_model_reloads(tmp_path):
    torch.manual_seed(0)
    model = LeNet300100(hidden1=40, hidden2=20).eval()  # as if channels were pruned from 300 and 100
    quantize_(model, KMeansConfig(bits=4))
    path = save_artifact(model, tmp_path / "a", architecture={"name": "lenet300_100", "kwargs": {}})
    loaded, _ = load_artifact(path)
    assert loaded.fc1.bias.shape == (40,) and loaded.fc2.weight.shape == (20, 40)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))


@requires_ort
def test_damaged_int8_payload_is_refused(tmp_path):
    path = save_artifact(_quantized("static"), tmp_path / "a", architecture=ARCH)
    data = bytearray((path / "model.int8.onnx.zst").read_bytes())
    data[len(data) // 2] ^= 1
    (path / "model.int8.onnx.zst").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.int8.onnx.zst is corrupted"):
        load_artifact(path)


@requires_ort
def loaded_state_keys(path):
    return set(load_artifact(path)[0].state_dict())


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_int8_weights_are_stored_once(tmp_path, method):
    """The int8 graph is stored without the weight initializers the codes already hold, and rebuilt exactly."""
    import onnx
    from onnx import numpy_helper

    from torchslim.artifact._codec import zstd_decompress
    from torchslim.quantize._layout import compact_onnx, int8_onnx_of, join_int8_weights

    model = _quantized(method)
    full = int8_onnx_of(model)
    path = save_artifact(model, tmp_path / "a", architecture=ARCH)
    stored = (path / "model.int8.onnx.zst").read_bytes()
    shared = read_manifest(path)["quantization"]["int8_onnx_weights"]
    layers = [n for n, m in model.named_modules() if type(m).__name__ == "QuantizedLayer"]
    proto = onnx.load_from_string(full)
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    by_layer = {name: spec for name, spec in shared["initializers"].items() if "layer" in spec}
    assert sorted(spec["layer"] for spec in by_layer.values()) == sorted(layers)
    # float tensors the graph repeats (dynamic: biases; static: weight scales) are stored once too
    tensors = {s["tensor"] for s in shared["initializers"].values() if "tensor" in s}
    assert tensors and all(t in loaded_state_keys(path) for t in tensors)
    assert len(stored) < len(full) - sum(weights[k].size for k in shared["initializers"]) + 100
    loaded, _ = load_artifact(path)
    assert int8_onnx_of(loaded) == compact_onnx(full)  # the same graph less its shape annotations
    for initializer, spec in by_layer.items():  # ORT's int8 weight == the layer's code - zero point
        source = loaded.get_submodule(spec["layer"]).weight_source
        centred = source.codes().to(torch.int16) - source.zero_point.to(torch.int16).reshape(-1, *[1] * (
            len(source.shape) - 1))
        expected = centred.t() if spec["transpose"] else centred  # MatMulInteger holds a Linear weight as (in, out)
        assert spec["transpose"] == (method == "dynamic")
        assert torch.equal(expected.to(torch.int8), torch.from_numpy(weights[initializer].copy()))
    with torch.no_grad():  # another code in a layer: the rebuilt graph no longer matches its recorded hash
        loaded.fc1.weight_source.packed[0] ^= 1
    with pytest.raises(ValueError, match="sha256"):
        join_int8_weights(zstd_decompress(stored)[0], shared, loaded)


@requires_ort
def test_int8_model_is_dropped_once_the_weights_change(tmp_path):
    model = _quantized("static")
    with torch.no_grad():
        model.fc2.bias.add_(1.0)  # e.g. fine-tuned after quantization: the int8 graph no longer matches
    path = save_artifact(model, tmp_path / "a", architecture=ARCH)
    assert not (path / "model.int8.onnx.zst").exists()
    assert "int8_onnx" not in read_manifest(path)["quantization"]


@requires_ort
def test_load_in_onnxruntime(tmp_path):
    import torchslim
    from torchslim.export import quantized_kernels

    x = torch.rand(33, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    static = save_artifact(_quantized("static"), tmp_path / "s", architecture=ARCH, extra={"input_shape": [1, 8, 8]})
    session = torchslim.load(static, runtime="onnxruntime", intra_op_threads=1)
    module = torchslim.load(static)
    assert session.int8 and quantized_kernels(session.model) == {"QGemm": 2, "QLinearConv": 2}
    out, ref = session(x), module(x).detach()
    assert float((out - ref).norm() / ref.norm()) < 0.05  # the module simulates what the int8 kernels compute

    kmeans = save_artifact(_quantized("kmeans3"), tmp_path / "k", architecture=ARCH,
                           extra={"input_shape": [1, 8, 8]})
    session = torchslim.load(kmeans, runtime="onnxruntime")
    assert not session.int8 and quantized_kernels(session.model) == {}  # fp32 export of the dequantized model
    assert float((session(x) - torchslim.load(kmeans)(x).detach()).abs().max()) < 1e-4
    with pytest.raises(ValueError, match="runtime"):
        torchslim.load(kmeans, runtime="tensorrt")


def test_import_torchslim_stays_light():
    code = ("import sys, torchslim; torchslim.load; "
            "print(json.dumps([m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": "src"})
    assert json.loads(out.stdout) == []  # torch, onnx and onnxruntime load when an artifact is loaded


def _rename_layer(manifest):
    layers = manifest["quantization"]["layers"]
    layers["fc9"] = layers.pop("fc1")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("architecture"), "no architecture"),
    (lambda m: m.pop("payloads"), "lists no payloads"),
    (lambda m: m["quantization"]["layers"]["fc1"].pop("shape"), "lacks the key 'shape'"),
    (_rename_layer, "do not fit the recorded model"),
    (lambda m: m["quantization"]["layers"]["fc1"].update(kind="Conv2d"), "do not fit the recorded model"),
])
def test_consistent_but_wrong_manifest_is_a_one_line_artifact_error(tmp_path, edit, message):
    path = save_artifact(_quantized("weight2"), tmp_path / "a", architecture=ARCH)
    rewrite_manifest(path, edit)
    with pytest.raises(ArtifactError, match=message) as err:
        load_artifact(path)
    assert "\n" not in str(err.value)
