"""int8 weights in [-64, 64] (``reduce_range``) for CPUs whose int8 products overflow with full 8-bit weights."""

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from quant_models import MLP, image_batches, relative_error, requires_ort
from torchslim._errors import ConfigError, TorchslimWarning
from torchslim.export import cpu_int8_features
from torchslim.export.cpu import int8_products_saturate, weights_reduce_range
from torchslim.quantize import (DynamicConfig, PerChannel, PerTensor, QATConfig, StaticConfig, config_from_mapping,
                                quantize_, quantize_tensor)
from torchslim.quantize._layout import full_range_int8_layers


@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel()])
def test_reduced_codes_are_onnx_runtimes(granularity):
    """The torch codes and scales equal ONNX Runtime's own reduce_range quantization of the same weights (so the
    artifact stores them once), and reach ±64 exactly."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(3))
    qt = quantize_tensor(w, 8, granularity, symmetric=True, reduce_range=True)
    centred = qt.codes.to(torch.int16) - 128
    assert int(centred.min()) >= -64 and int(centred.max()) <= 64 and int(centred.abs().max()) == 64
    rows = [w] if isinstance(granularity, PerTensor) else list(w)
    codes = []
    for i, row in enumerate(rows):
        zero_point, scale, q = quantize_data(row.numpy().ravel(), TensorProto.INT8, symmetric=True,
                                                   reduce_range=True)
        assert int(zero_point) == 0 and float(scale) == float(qt.scale[i])
        codes.append(q.reshape(row.shape))
    assert np.array_equal(np.stack(codes).reshape(w.shape) if len(rows) > 1 else codes[0], centred.numpy())
    full = quantize_tensor(w, 8, granularity, symmetric=True)
    assert int((full.codes.to(torch.int16) - 128).abs().max()) == 127  # the default grid is the full one


def test_which_cpus_overflow(tmp_path):
    def report(flags: str):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        return cpu_int8_features(info)

    assert int8_products_saturate(report("fpu sse avx avx2 fma"))  # AVX2 only: vpmaddubsw sums pairs in int16
    assert int8_products_saturate(report("avx2 avx512f avx512bw"))  # AVX-512 without VNNI
    assert not int8_products_saturate(report("avx2 avx512f avx512_vnni"))
    assert not int8_products_saturate(report("avx2 avx_vnni"))
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd\n")
    assert not int8_products_saturate(cpu_int8_features(arm))
    assert weights_reduce_range(True) and not weights_reduce_range(False)
    assert weights_reduce_range("auto") == int8_products_saturate()


@requires_ort
def test_full_range_weights_overflow_exactly_where_the_cpu_says_so():
    """Inputs at the top of their uint8 range times weights at +127: each pair of products is 64,770, beyond
    int16. On a CPU without VNNI, ONNX Runtime's product saturates; 7-bit weights (pairs of 32,640) never do."""
    from torchslim.export.onnx_export import to_onnx_proto
    from torchslim.export.ort_quant import quantize_dynamic_onnx
    from torchslim.export.runtime import OrtSession

    layer = nn.Linear(64, 8)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    x = torch.ones(4, 64)  # 64 per output
    proto = to_onnx_proto(layer, x)
    errors = {rr: float((OrtSession(quantize_dynamic_onnx(proto, reduce_range=rr), 1)(x) - 64).abs().max())
              for rr in (False, True)}
    assert errors[True] < 0.1
    if int8_products_saturate():
        assert errors[False] > 16  # measured on an AVX2 CPU: pairs clipped to 32,767, the sum about half
    else:
        assert errors[False] < 0.1


def test_the_setting_is_validated():
    assert DynamicConfig().reduce_range == "auto" and StaticConfig().reduce_range == "auto"
    for bad in ("yes", 1, None, [True]):
        with pytest.raises(ConfigError, match="reduce_range"):
            config_from_mapping({"method": "static", "reduce_range": bad})
    with pytest.raises(ConfigError, match="reduce_range.*8-bit qat"):
        QATConfig(bits=4, reduce_range=True)
    with pytest.raises(ConfigError, match="reduce_range.*not applicable"):
        config_from_mapping({"method": "kmeans", "reduce_range": True})


def _mlp():
    torch.manual_seed(0)
    return MLP().eval()


@requires_ort
@pytest.mark.parametrize("config", [StaticConfig(reduce_range=True), DynamicConfig(reduce_range=True),
                                    QATConfig(bits=8, reduce_range=True), StaticConfig(reduce_range=False)],
                         ids=["static", "dynamic", "qat8", "static-full"])
def test_each_int8_method_quantizes_on_the_grid_it_is_given(config, tmp_path):
    from torchslim.artifact import load_artifact, save_artifact

    model = _mlp()
    batches = [(b.flatten(1),) for b in image_batches(4)]
    x = batches[0][0]
    ref = model(x).detach()
    report = quantize_(model, config, calibration=batches, finetune=lambda *a: None)
    reduced = config.reduce_range is True
    assert (full_range_int8_layers(model) == []) == reduced
    assert full_range_int8_layers(model) in ([], ["fc1", "fc2", "fc3"])
    ort = report.ort_session(intra_op_threads=1)(x)
    if reduced or not int8_products_saturate():  # full-range weights overflow on such a CPU (the test above)
        assert relative_error(ort, ref) < 0.05
        assert relative_error(model(x).detach(), ort) < 0.02  # the torch model simulates this grid, not the other
    path = save_artifact(model, tmp_path / "a", architecture={"name": "lenet300_100"})
    reloaded, manifest = load_artifact(path, model=_mlp())
    shared = manifest["quantization"]["int8_onnx_weights"]["initializers"]
    assert sum("layer" in spec for spec in shared.values()) == 3  # ORT's codes are the stored ones: kept once
    assert torch.allclose(reloaded(x), model(x), atol=1e-6)


@requires_ort
def test_loading_full_range_weights_where_they_overflow_warns(tmp_path, monkeypatch):
    import torchslim
    from torchslim.artifact import save_artifact

    model = _mlp()
    quantize_(model, DynamicConfig(reduce_range=False), calibration=[(b.flatten(1),) for b in image_batches(2)])
    path = save_artifact(model, tmp_path / "a", architecture={"name": "lenet300_100"}, extra={"input_shape": [64]})
    monkeypatch.setattr("torchslim.export.cpu.int8_products_saturate", lambda report=None: True)
    monkeypatch.setattr("torchslim._load._WARNED_OF", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torchslim.load(path, runtime="onnxruntime", model=_mlp())
        torchslim.load(path, runtime="onnxruntime", model=_mlp())  # said once
    messages = [str(w.message) for w in caught if issubclass(w.category, TorchslimWarning)]
    assert len(messages) == 1 and "fc1, fc2, fc3" in messages[0] and "reduce_range: true" in messages[0]
    monkeypatch.setattr("torchslim._load._WARNED_OF", set())
    monkeypatch.setattr("torchslim.export.cpu.int8_products_saturate", lambda report=None: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torchslim.load(path, runtime="onnxruntime", model=_mlp())
    assert not [w for w in caught if issubclass(w.category, TorchslimWarning)]
    reduced = _mlp()
    quantize_(reduced, DynamicConfig(reduce_range=True), calibration=[(b.flatten(1),) for b in image_batches(2)])
    assert full_range_int8_layers(reduced) == [] and full_range_int8_layers(copy.deepcopy(model)) != []
