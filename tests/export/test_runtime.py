"""ONNX Runtime sessions: a model this runtime cannot load is a one-line error, not a traceback."""

import importlib.util

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
