"""ONNX Runtime sessions: a model this runtime cannot load is a one-line error, not a traceback; denormals are
flushed; worker threads stop spinning when a run returns."""

import importlib.util

import numpy as np

import pytest

from torchslim._errors import ConfigError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")


def test_a_model_from_a_newer_opset_is_a_one_line_error_naming_the_runtime_and_the_opset():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from torchslim.export.runtime import OrtSession

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
                              opset_imports=[helper.make_opsetid("", 99)])
    with pytest.raises(ConfigError) as err:
        OrtSession(model.SerializeToString())
    message = str(err.value)
    assert "\n" not in message and f"ONNX Runtime {ort.__version__}" in message and "(opset 99)" in message


@pytest.mark.parametrize("caller_flushes", [False, True])
def test_runs_flush_denormals_and_leave_the_callers_mode_as_it_was(caller_flushes):
    """Denormals are flushed to zero while ONNX Runtime computes (a denormal times one comes out zero), and the
    calling thread's own mode is the same after creating the session and after each run."""
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from torchslim.export.runtime import OrtSession, flushes_denormals

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    one = numpy_helper.from_array(np.ones(2, np.float32), "one")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "one"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    torch.set_flush_denormal(caller_flushes)
    try:
        session = OrtSession(model.SerializeToString(), intra_op_threads=1)
        assert flushes_denormals() == caller_flushes
        out = session(np.array([1e-39, 2.0], np.float32))
        assert out.tolist() == [0.0, 2.0]
        assert flushes_denormals() == caller_flushes
        assert (np.float32(1e-39) * np.float32(1.0) == 0) == caller_flushes
    finally:
        torch.set_flush_denormal(False)


def _chain_of_matmuls(size: int = 512, depth: int = 20) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((size, size)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(depth)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [64, size])],
                              [helper.make_tensor_value_info(f"h{depth}", TensorProto.FLOAT, [64, size])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_worker_threads_stop_spinning_when_a_run_returns():
    """After a run, a two-thread session's worker sleeps: the process spends (almost) no CPU while the caller
    waits. ONNX Runtime's default pool keeps busy-waiting after the run (~30 ms of CPU in the 0.3 s here), time
    that a torch baseline timed next, or the user's own work, would lose."""
    import time

    import onnxruntime as ort

    from torchslim.export.runtime import OrtSession

    model, x = _chain_of_matmuls(), np.ones((64, 512), np.float32)

    def cpu_seconds_after_a_run(session) -> float:
        session.run(None, {"h0": x})
        start = time.process_time()
        time.sleep(0.3)
        return time.process_time() - start

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    default = cpu_seconds_after_a_run(ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]))
    ours = cpu_seconds_after_a_run(OrtSession(model, intra_op_threads=2).session)
    assert ours < 0.005 < default


@pytest.mark.parametrize("per_thread_ms, chosen", [(lambda n: 2.0 * n, 1), (lambda n: 4.0 / n, 4)])
def test_the_session_timed_is_the_faster_of_one_thread_and_all(monkeypatch, per_thread_ms, chosen):
    """A small int8 model runs slower when ORT splits its operators across threads, a large one faster: each
    session keeps the thread count it runs fastest on (here made by a stand-in session whose call sleeps)."""
    import time

    import torch

    import torchslim.export.runtime as runtime

    class Sleeper:
        def __init__(self, model, intra_op_threads=None):
            self.model, self.threads = model, intra_op_threads

        def __call__(self, x):
            time.sleep(per_thread_ms(self.threads) / 1e3)
            return x

    monkeypatch.setattr(runtime, "OrtSession", Sleeper)
    session = runtime.fastest_session(b"graph", 4, torch.zeros(2, 3), rounds=2, runs=2)
    assert (session.threads, session.model) == (chosen, b"graph")
    assert runtime.fastest_session(b"graph", 1, torch.zeros(2, 3)).threads == 1  # one core: nothing to choose


@pytest.mark.parametrize("activation, float_ops", [
    ("ReLU", 0),  # folded into the int8 convolution's output range
    ("Sigmoid", 0),  # QLinearSigmoid
    ("GELU", 1),  # no int8 kernel: one Gelu in float
    ("Hardswish", 2),  # no int8 kernel: run as HardSigmoid and Mul in float
])
def test_float_ops_between_int8_ones_are_counted(activation, float_ops):
    """An activation ONNX Runtime has no int8 kernel for runs in float between two int8 convolutions, with a
    conversion on each side: the report names it when the int8 graph is slower than the fp32 export."""
    import torch
    from torch import nn

    from torchslim.export.onnx_export import to_onnx_proto
    from torchslim.export.ort_quant import collect_ranges, quantize_static_onnx
    from torchslim.export.runtime import int8_graph_summary
    from torchslim.quantize.observers import MinMaxObserver

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), getattr(nn, activation)(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.rand(16, 3, 6, 6)
    proto = to_onnx_proto(model, x[:1])
    int8 = quantize_static_onnx(proto, collect_ranges(proto, [{"input": x.numpy()}], MinMaxObserver))
    kernels, between = int8_graph_summary(int8)
    assert kernels["QGemm"] == 1 and kernels["QLinearConv"] == 2  # the layers run int8 in every case
    assert ("QLinearSigmoid" in kernels) is (activation == "Sigmoid")
    assert sum(between.values()) == float_ops
    assert not set(between) & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "Reshape", "Flatten"}


def test_a_float_op_counts_through_data_movement_around_it():
    """A layer kept float sits behind ORT's layout ops (DequantizeLinear → ReorderInput → Conv → ReorderOutput →
    QuantizeLinear): it is still a float op between int8 ones; one fed by the graph's float input is not."""
    from onnx import TensorProto, helper, numpy_helper

    from torchslim.export.runtime import _float_islands

    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "z")
    nodes = [helper.make_node("Tanh", ["x"], ["t0"]),  # float input, float output to a float op: not counted
             helper.make_node("Relu", ["t0"], ["t1"]),
             helper.make_node("QuantizeLinear", ["t1", "s", "z"], ["q1"]),  # Relu hands its output to int8
             helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"]),
             helper.make_node("Transpose", ["d1"], ["r1"]),
             helper.make_node("Tanh", ["r1"], ["t2"]),  # dequantized through a Transpose: counted
             helper.make_node("Transpose", ["t2"], ["r2"]),
             helper.make_node("QuantizeLinear", ["r2", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [4])], [scale, zero])
    assert _float_islands(graph) == {"Relu": 1, "Tanh": 1}


def test_a_dynamic_int8_graph_has_no_float_ops_between_int8_ones_to_count():
    """Dynamic int8 quantizes each product's float input inside its kernel: no conversions, nothing to count."""
    import torch
    from torch import nn

    from torchslim.export.onnx_export import to_onnx_proto
    from torchslim.export.ort_quant import quantize_dynamic_onnx
    from torchslim.export.runtime import int8_graph_summary

    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    kernels, between = int8_graph_summary(quantize_dynamic_onnx(to_onnx_proto(model, torch.rand(1, 8))))
    assert kernels == {"DynamicQuantizeMatMul": 2} and between is None
