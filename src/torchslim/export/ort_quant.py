"""int8 ONNX models for ONNX Runtime: static QDQ from our own observers, and dynamic quantization.

Static: every float tensor of the fp32 graph is made a graph output, the calibration batches run through
ORT, and torchslim's observer (minmax / percentile / mse) turns each tensor's values into a range. The
ranges go to ``onnxruntime.quantization.quantize_static`` as a calibration cache (MinMax format), so ORT's
own quantizer places QuantizeLinear/DequantizeLinear pairs (QDQ format, QUInt8 activations, per-channel
symmetric QInt8 weights — the layout ORT's x86 int8 kernels expect) and its graph optimiser fuses them
into QLinearConv / QGemm / QLinearMatMul at session creation. Our observers therefore set the ranges of
both the torch simulation and the ORT model.
Dynamic: ``quantize_dynamic`` (MatMulInteger/DynamicQuantizeMatMul, DynamicQuantizeLSTM for an LSTM layer whose
module is not excluded); Gemm nodes are first rewritten as
MatMul + Add because ORT's dynamic quantizer only handles MatMul, and each unmasked self-attention's core
becomes one ``MultiHeadAttention`` node (:mod:`torchslim.export.attention_fusion`; its projections stay MatMul
nodes and are quantized like every other); after quantization a packed q/k/v in-projection becomes three int8
products sharing one quantized input, so no packed output is split.
"""

from __future__ import annotations

import ast
import logging
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from torchslim.export.attention_fusion import fuse_attention_, split_qkv_projection_
from torchslim.export.cpu import weights_reduce_range
from torchslim.export.onnx_export import strip_onnx_metadata


def module_of_node(node) -> str | None:
    """Qualified torch module name an exported ONNX node came from (dynamo exporter metadata)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s for s in ast.literal_eval(prop.value) if s]
            return scopes[-2] if len(scopes) >= 2 else None
    return None


def nodes_of_modules(model, module_names: Iterable[str]) -> list[str]:
    """Names of the ONNX nodes exported from the given torch modules (for ``nodes_to_exclude``)."""
    wanted = set(module_names)
    found = []
    for node in model.graph.node:
        owner = module_of_node(node)
        if owner is not None and any(owner == m or owner.startswith(m + ".") for m in wanted):
            found.append(node.name)
    return found


def _float_tensors(model) -> list[str]:
    """Graph inputs and node outputs of float type (after shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    names += [o for n in model.graph.node for o in n.output if o]
    return [n for n in dict.fromkeys(names) if types.get(n) == onnx.TensorProto.FLOAT]


def collect_ranges(model, feeds: Sequence[dict[str, np.ndarray]], make_observer: Callable[[], object]
                   ) -> dict[str, tuple[float, float] | None]:
    """Run ``feeds`` through ``model`` and observe every float tensor.

    Args:
        model: fp32 onnx.ModelProto.
        feeds: calibration batches, {input name: array}.
        make_observer: builds a fresh observer (``observe``/``range``) per tensor.
    Returns:
        {tensor name: (lo, hi)}, or None for a tensor that held NaN or Inf in some batch (attention scores with a
        -inf mask added): no int8 range represents it, so :func:`quantize_static_onnx` keeps its ops float.
    """
    import copy

    import onnx
    import onnxruntime as ort

    names = _float_tensors(model)
    augmented = copy.deepcopy(model)
    existing = {o.name for o in augmented.graph.output}
    for name in names:
        if name not in existing:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    opts.log_severity_level = 3
    session = ort.InferenceSession(augmented.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    observers = {name: make_observer() for name in names}  # None once the tensor held NaN or Inf
    for feed in feeds:
        values = session.run(names, feed)
        for name, value in zip(names, values):
            tensor = torch.from_numpy(np.asarray(value))
            if observers[name] is None:
                continue
            if bool(torch.isfinite(tensor).all()):
                observers[name].observe(tensor)
            else:
                observers[name] = None
    return {name: None if obs is None else obs.range() for name, obs in observers.items()}


_FLOAT_OPS = {"Gather", "GatherElements", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
              "ConvTranspose"}


def quantize_static_onnx(model, ranges: dict[str, tuple[float, float] | None], *, per_channel: bool = True,
                         nodes_to_exclude: Sequence[str] = (), reduce_range: bool | str = "auto") -> bytes:
    """QDQ int8 model from an fp32 model and per-tensor ranges (see module docstring).

    Args:
        model: fp32 onnx.ModelProto.
        ranges: {tensor name: (lo, hi), or None: the ops reading or writing it stay float} from
            :func:`collect_ranges`.
        per_channel: per-output-channel weight scales.
        nodes_to_exclude: node names left in float.
        reduce_range: weights in [-64, 64] (for CPUs whose int8 products overflow otherwise; "auto": on such a
            CPU, see :func:`torchslim.export.cpu.weights_reduce_range`); activations keep their full uint8 range.
    Returns:
        Serialized quantized ONNX model.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry

    # What the torch model keeps float stays float here too: embedding lookups, normalization layers and
    # transposed convolutions (the quantize report names them); everything else ORT can run in int8.
    op_types = sorted(set(QDQRegistry) - _FLOAT_OPS)

    data = {name: TensorData(lowest=np.array(r[0], dtype=np.float32), highest=np.array(r[1], dtype=np.float32))
            for name, r in ranges.items() if r is not None}
    unranged = {name for name, r in ranges.items() if r is None}
    nodes_to_exclude = list(nodes_to_exclude) + [n.name for n in model.graph.node
                                                 if unranged & (set(n.input) | set(n.output))]
    with tempfile.TemporaryDirectory(prefix="torchslim-quant-") as tmp, quiet_ort_logging():
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        out = Path(tmp) / "int8.onnx"
        quantize_static(model, out, calibration_data_reader=None, calibration_cache_path=cache,
                        calibrate_method=CalibrationMethod.MinMax, quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, reduce_range=weights_reduce_range(reduce_range),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(nodes_to_exclude), op_types_to_quantize=op_types, extra_options={"WeightSymmetric": True})
        return strip_onnx_metadata(out.read_bytes())


def gemm_to_matmul(model) -> dict[str, list[str]]:
    """Rewrite Gemm(A, B, C) nodes (alpha = beta = 1, transA = 0) with constant B as MatMul + Add, in place.

    Returns:
        {Gemm node name: names of the nodes that replaced it}.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    new_nodes, replaced, made = [], {}, set()  # made: MatMul weights written (a layer called twice shares one)
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        simple = (node.op_type == "Gemm" and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
                  and not attrs.get("transA", 0) and node.input[1] in inits)
        if not simple:
            new_nodes.append(node)
            continue
        w_name = node.input[1] + ("_matmul" if attrs.get("transB", 0) else "_matmul_n")
        if w_name not in made:
            weight = numpy_helper.to_array(inits[node.input[1]])
            if attrs.get("transB", 0):
                weight = weight.T  # (in, out) for MatMul
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), w_name))
            made.add(w_name)
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_matmul" if has_bias else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=node.name + "_MatMul")
        matmul.metadata_props.extend(node.metadata_props)
        new_nodes.append(matmul)
        if has_bias:
            add = helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_Add")
            add.metadata_props.extend(node.metadata_props)
            new_nodes.append(add)
        replaced[node.name] = [n.name for n in new_nodes[-(2 if has_bias else 1):]]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _drop_unread_initializers_(model.graph)
    onnx.checker.check_model(model)
    return replaced


def fold_lstm_weights_(model) -> int:
    """Make each LSTM node's W, R and B initializers, in place; returns how many were folded.

    Why: the exporter computes some of them from the parameters at run time (a bidirectional layer's directions
    joined by Concat), and ONNX Runtime's quantizer only quantizes an LSTM whose W and R are constants. A tensor
    that depends on a graph input is left as it is.
    """
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    wanted = list(dict.fromkeys(t for n in graph.node if n.op_type == "LSTM" for t in n.input[1:4]
                                if t and t not in inits))
    folded: dict[str, list] = {}  # tensor: the nodes computing it
    for tensor in wanted:
        nodes, stack, constant = {}, [tensor], True
        while stack and constant:
            name = stack.pop()
            if not name or name in inits or name in nodes:
                continue
            node = producer.get(name)
            if node is None:  # a graph input
                constant = False
                break
            for out in node.output:
                nodes[out] = node
            stack.extend(node.input)
        if constant:
            folded[tensor] = list({id(n): n for n in nodes.values()}.values())
    if not folded:
        return 0
    needed = {id(n) for ns in folded.values() for n in ns}
    sub = [n for n in graph.node if id(n) in needed]  # in the graph's (topological) order
    used = {i for n in sub for i in n.input}
    fold = helper.make_graph(sub, "fold", [], [helper.make_empty_tensor_value_info(t) for t in folded],
                             [inits[i] for i in used if i in inits])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(helper.make_model(fold, opset_imports=model.opset_import,
                                                     ir_version=model.ir_version).SerializeToString(),
                                   opts, providers=["CPUExecutionProvider"])
    for tensor, value in zip(folded, session.run(list(folded), {})):
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), tensor))
    kept = [n for n in graph.node if not set(n.output) & set(folded)]
    while True:  # the nodes that computed them, where nothing else reads their outputs
        read = {i for n in kept for i in n.input} | {o.name for o in graph.output}
        alive = [n for n in kept if any(o in read for o in n.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unread_initializers_(graph)
    return len(folded)


def _drop_unread_initializers_(graph) -> None:
    """Remove the initializers no node reads (nor the graph returns), in place."""
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def quantize_dynamic_onnx(model, *, per_channel: bool = True, nodes_to_exclude: Sequence[str] = (),
                          reduce_range: bool | str = "auto") -> bytes:
    """Dynamic int8 model: int8 weights, activations quantized per batch by ORT at run time (MatMul and LSTM
    nodes; exclude the others' modules' nodes).

    Args:
        model: fp32 onnx.ModelProto (Gemm nodes are rewritten to MatMul + Add on a copy).
        per_channel: per-output-channel weight scales.
        nodes_to_exclude: node names (of ``model``) left in float.
        reduce_range: weights in [-64, 64] (for CPUs whose int8 products overflow otherwise; "auto": on such a
            CPU, see :func:`torchslim.export.cpu.weights_reduce_range`).
    Returns:
        Serialized quantized ONNX model.
    """
    import copy

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = copy.deepcopy(model)
    replaced = gemm_to_matmul(model)
    fold_lstm_weights_(model)
    fuse_attention_(model)
    excluded = sorted({new for name in nodes_to_exclude for new in replaced.get(name, [name])})
    with tempfile.TemporaryDirectory(prefix="torchslim-quant-") as tmp, quiet_ort_logging():
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(model, out, per_channel=per_channel, weight_type=QuantType.QInt8,
                         reduce_range=weights_reduce_range(reduce_range),
                         op_types_to_quantize=["MatMul", "LSTM"], nodes_to_exclude=excluded,
                         extra_options={"WeightSymmetric": True})
        quantized = onnx.load(out)
    split_qkv_projection_(quantized)
    return strip_onnx_metadata(quantized.SerializeToString())


class quiet_ort_logging:
    """ORT's quantizer logs on the root logger (a pre-processing suggestion at WARNING, every node it skips at
    INFO); silenced for the duration."""

    def __enter__(self):
        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logging.getLogger().setLevel(self.level)
