import importlib.util

import pytest
import torch
from torch import nn

from model_zoo import TinyEncoder
from torchslim.export import OrtSession, cpu_int8_features, export_onnx, optimized_op_counts, quantized_kernels

requires_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.pool = nn.Conv2d(8, 16, 3), nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 3 * 3, 10)

    def forward(self, x):  # (N, 1, 8, 8)
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv2(x))), 1))


def _conv_bn():
    torch.manual_seed(0)
    model = ConvBN().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model


@requires_ort
@pytest.mark.parametrize("make, shape", [(_conv_bn, (1, 8, 8)), (lambda: TinyEncoder().eval(), (5, 16))])
def test_fp32_onnx_matches_torch_with_dynamic_batch(tmp_path, make, shape):
    torch.manual_seed(0)
    model = make()
    data = export_onnx(model, torch.randn(2, *shape), tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == data
    session = OrtSession(tmp_path / "m.onnx", intra_op_threads=1)
    for batch in (1, 7, 33):
        x = torch.randn(batch, *shape)
        out = session(x)
        assert isinstance(out, torch.Tensor) and out.shape[0] == batch
        assert float((out - model(x).detach()).abs().max()) <= 1e-4
    assert quantized_kernels(data) == {}  # fp32 graph runs float kernels only


@requires_ort
def test_quantized_torch_layers_export_dequantized():
    from torchslim.quantize import KMeansConfig, WeightOnlyConfig, quantize_
    for config in (WeightOnlyConfig(bits=4), KMeansConfig(bits=3)):
        model = _conv_bn()
        quantize_(model, config)
        x = torch.randn(5, 1, 8, 8)
        out = OrtSession(export_onnx(model, x))(x)
        assert float((out - model(x).detach()).abs().max()) <= 1e-4


@requires_ort
def test_session_checks_inputs_and_counts_ops():
    data = export_onnx(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(2, 4))
    session = OrtSession(data, intra_op_threads=2)
    with pytest.raises(ValueError):
        session(torch.randn(2, 4), torch.randn(2, 4))
    assert optimized_op_counts(data).total() >= 1


def test_cpu_int8_features_parses_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile amx_int8\n")
    report = cpu_int8_features(info)
    assert report["avx512"] and report["avx512_vnni"] and report["amx_int8"] and report["vnni"]
    assert not report["avx_vnni"]
    missing = cpu_int8_features(tmp_path / "absent")
    assert missing["source"] == "unavailable" and not missing["vnni"]
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd asimddp i8mm\n")
    assert cpu_int8_features(arm)["arm_dotprod"] and cpu_int8_features(arm)["arm_i8mm"]


def test_an_lstms_weights_computed_at_run_time_are_folded_into_constants():
    """The exporter may join a bidirectional layer's directions with a Concat at run time; ONNX Runtime's quantizer
    only quantizes an LSTM whose W and R are constants, so they are folded first (same outputs), and what reads a
    graph input is left alone."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from torchslim.export.ort_quant import fold_lstm_weights_
    from torchslim.export.runtime import OrtSession

    rng = np.random.default_rng(0)
    hidden, features = 3, 2
    arrays = {"w_f": (1, 4 * hidden, features), "w_b": (1, 4 * hidden, features), "r": (2, 4 * hidden, hidden)}
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in arrays.items()]
    nodes = [helper.make_node("Concat", ["w_f", "w_b"], ["w"], axis=0),  # computed at run time
             helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=hidden, direction="bidirectional"),
             helper.make_node("Shape", ["x"], ["s"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 1, features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("s", TensorProto.INT64, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((4, 1, features)).astype(np.float32)
    before = OrtSession(model.SerializeToString(), 1)(x)
    assert fold_lstm_weights_(model) == 1  # w; r already is a constant
    assert [n.op_type for n in model.graph.node] == ["LSTM", "Shape"]  # the Concat went, what reads x stayed
    assert sorted(i.name for i in model.graph.initializer) == ["r", "w"]  # its inputs went with it
    after = OrtSession(model.SerializeToString(), 1)(x)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert fold_lstm_weights_(model) == 0
