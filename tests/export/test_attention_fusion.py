"""Self-attention's core fused into one attention node: same outputs, masked ones left alone; int8 q/k/v products."""

import collections
import importlib.util

import pytest
import torch
from torch import nn

from torchslim.export.attention_fusion import fuse_attention_, is_attention_core, runtime_has_onnx_attention
from torchslim.export.onnx_export import to_onnx_proto
from torchslim.quantize.attention import project_attention_

requires_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")


class Encoder(nn.Module):
    """Two post-norm encoder layers over (N, T, 16) with 4 heads; ``causal`` masks the attention."""

    def __init__(self, causal: bool = False):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.causal = causal

    def forward(self, x):  # (N, T, 16)
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
            return self.encoder(x, mask=mask, is_causal=True)
        return self.encoder(x)


def _proto(causal: bool):
    torch.manual_seed(0)
    model = Encoder(causal).eval()
    project_attention_(model)  # the form every quantization method exports
    return model, to_onnx_proto(model, torch.randn(2, 6, 16))


def _run(proto, x):
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@requires_ort
def test_each_layer_becomes_one_node_with_the_same_outputs():
    model, proto = _proto(causal=False)
    before = collections.Counter(n.op_type for n in proto.graph.node)
    assert fuse_attention_(proto) == 2
    after = collections.Counter(n.op_type for n in proto.graph.node)
    assert after["Softmax"] == 0 and after["Transpose"] == 0
    if runtime_has_onnx_attention():  # the standard op, the graph moved to opset 23
        assert after["Attention"] == 2 and next(op.version for op in proto.opset_import if op.domain == "") == 23
    else:
        assert after["MultiHeadAttention"] == 2
    assert after["MatMul"] == before["MatMul"] - 4  # q·kᵀ and ·v of two layers; the projections stay
    x = torch.randn(5, 6, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    assert abs(_run(proto, x) - expected).max() < 1e-5


@requires_ort
def test_without_the_standard_op_the_contrib_node_computes_the_same(monkeypatch):
    """A graph that cannot move to opset 23 (here: the runtime is said to lack the op; the same for a graph holding
    GroupNormalization, whose meaning changed) gets ORT's MultiHeadAttention and keeps its opset."""
    import torchslim.export.attention_fusion as fusion

    model, proto = _proto(causal=False)
    opset = next(op.version for op in proto.opset_import if op.domain == "")
    monkeypatch.setattr(fusion, "runtime_has_onnx_attention", lambda: False)
    assert fuse_attention_(proto) == 2
    after = collections.Counter(n.op_type for n in proto.graph.node)
    assert after["MultiHeadAttention"] == 2 and after["Attention"] == 0
    assert next(op.version for op in proto.opset_import if op.domain == "") == opset < 23
    x = torch.randn(5, 6, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    assert abs(_run(proto, x) - expected).max() < 1e-5
    _, proto = _proto(causal=False)
    monkeypatch.undo()
    proto.graph.node[0].op_type = "GroupNormalization"  # only looked at, never run
    assert not fusion.can_use_onnx_attention(proto)


@requires_ort
def test_masked_attention_is_left_as_exported():
    _, proto = _proto(causal=True)
    data = proto.SerializeToString()
    assert fuse_attention_(proto) == 0
    assert proto.SerializeToString() == data


@requires_ort
def test_dynamic_int8_packed_in_projection_becomes_three_int8_products(monkeypatch):
    """After dynamic quantization each layer's packed int8 q/k/v in-projection and its Split become three int8
    products of the one quantized input with the weight's thirds (Split nodes on constants, which ONNX Runtime
    folds at load): the same outputs as the packed graph, nothing split at run time, the packed weight kept."""
    import onnx

    import torchslim.export.ort_quant as ort_quant
    from torchslim.export.runtime import optimized_op_counts

    model, proto = _proto(causal=False)
    split = onnx.load_from_string(ort_quant.quantize_dynamic_onnx(proto))
    monkeypatch.setattr(ort_quant, "split_qkv_projection_", lambda m: 0)
    packed = onnx.load_from_string(ort_quant.quantize_dynamic_onnx(proto))
    ops = collections.Counter(n.op_type for n in split.graph.node)
    before = collections.Counter(n.op_type for n in packed.graph.node)
    assert sum(map(is_attention_core, split.graph.node)) == sum(map(is_attention_core, packed.graph.node)) == 2
    assert ops["MatMulInteger"] == before["MatMulInteger"] + 2 * 2  # one packed product -> three, per layer
    assert before["Split"] == 2 and ops["Split"] == 2 * 4  # on the constants: weight, bias, scales, zero points
    assert optimized_op_counts(split.SerializeToString())["Split"] == 0  # folded when the session loads
    assert {i.name for i in split.graph.initializer} == {i.name for i in packed.graph.initializer}
    x = torch.randn(5, 6, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    assert abs(_run(split, x) - _run(packed, x)).max() < 1e-5
    assert abs(_run(split, x) - expected).max() < 0.1  # int8 of a random model: near, not equal