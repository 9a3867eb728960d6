"""Self-attention's core as one attention node of ONNX Runtime, in an exported graph.

The exporter writes scaled dot-product attention as ~12 small ops per layer (each of q, k, v: Reshape to
(N, T, H, d) and Transpose; q·kᵀ, scale, Softmax, ·v, Transpose and Reshape back to (N, T, H·d)). On short
sequences those ops, not the projections, set the latency: for a 3-layer d = 128 encoder over 8 tokens they took
~1.4 of ~3 ms per batch of 64 in ONNX Runtime (one thread), more than the int8 projections. ONNX's ``Attention``
(opset 23) and ORT's ``com.microsoft.MultiHeadAttention`` take q, k, v as (N, T, H·d) and do all of it in one
kernel; the standard op is used where the graph and the runtime allow it (:func:`fuse_attention_`).

The projections stay MatMul nodes, so the int8 quantizer still reaches them; only unmasked attention
(``need_weights=False``, no attention or padding mask) is matched, the pattern torch's export of
:class:`torchslim.quantize.attention.ProjectedMultiheadAttention` and ``nn.TransformerEncoderLayer`` writes.

After dynamic quantization, :func:`split_qkv_projection_` goes one step further for self-attention whose q, k and
v are the three thirds of one packed in-projection: the packed int8 product, its bias add and the split become
three int8 products of the one quantized input with the weight's thirds, so q, k and v are written once.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

__all__ = ["can_use_onnx_attention", "declare_attention_opsets_", "fuse_attention_", "is_attention_core",
           "node_attr", "qkv_products", "runtime_has_onnx_attention", "split_qkv_projection_"]

_HEADS_FIRST = [0, 2, 1, 3]  # (N, T, H, d) <-> (N, H, T, d)
_KEYS_LAST = [0, 2, 3, 1]  # (N, T, H, d) -> (N, H, d, T): k already transposed for q·kᵀ


class _Graph:
    """Producers, consumers, constants and attributes of a graph, for matching."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:  # Constant nodes (the exporter writes some scalars so)
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.graph_outputs = {o.name for o in graph.output}

    def only_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.graph_outputs:
            return users[0]
        return None

    def made_by(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


def node_attr(node, key: str, default: Any = None) -> Any:
    """The value of ``node``'s attribute ``key``, else ``default``."""
    from onnx import helper

    for a in node.attribute:
        if a.name == key:
            return helper.get_attribute_value(a)
    return default


def _heads_input(g: _Graph, name: str, perm: list[int]) -> tuple[str, int, int, list] | None:
    """``name`` = Transpose(perm)(Reshape(x, [.., .., H, d])) used once: (x, H, d, the two nodes), else None."""
    transpose = g.made_by(name, "Transpose")
    if transpose is None or list(node_attr(transpose, "perm") or []) != perm or len(g.consumers[name]) != 1:
        return None
    reshape = g.made_by(transpose.input[0], "Reshape")
    if reshape is None or len(g.consumers[reshape.output[0]]) != 1:
        return None
    shape = g.constants.get(reshape.input[1])
    if shape is None or shape.size != 4 or shape[2] <= 0 or shape[3] <= 0:
        return None
    return reshape.input[0], int(shape[2]), int(shape[3]), [reshape, transpose]


def _match(g: _Graph, softmax) -> tuple[dict[str, Any], list] | None:
    """The attention around one Softmax: ({q, k, v, out, heads, scale}, nodes it replaces) or None."""
    if node_attr(softmax, "axis", -1) not in (-1, 3):
        return None
    scores, scale, nodes = softmax.input[0], None, [softmax]
    scaling = g.producer.get(scores)
    if scaling is not None and scaling.op_type in ("Div", "Mul") and scaling.input[1] in g.constants:
        c = g.constants[scaling.input[1]]
        if c.size != 1 or float(c) == 0.0 or len(g.consumers[scores]) != 1:
            return None
        scale = 1.0 / float(c) if scaling.op_type == "Div" else float(c)
        scores, nodes = scaling.input[0], nodes + [scaling]
    qk = g.made_by(scores, "MatMul")
    pv = g.only_consumer(softmax.output[0], "MatMul")
    if qk is None or pv is None or pv.input[0] != softmax.output[0] or len(g.consumers[scores]) != 1:
        return None
    q, k, v = (_heads_input(g, qk.input[0], _HEADS_FIRST), _heads_input(g, qk.input[1], _KEYS_LAST),
               _heads_input(g, pv.input[1], _HEADS_FIRST))
    if q is None or k is None or v is None or len({q[1], k[1], v[1]}) != 1 or len({q[2], k[2], v[2]}) != 1:
        return None
    back = g.only_consumer(pv.output[0], "Transpose")
    if back is None or list(node_attr(back, "perm") or []) != _HEADS_FIRST:
        return None
    merge = g.only_consumer(back.output[0], "Reshape")
    shape = None if merge is None else g.constants.get(merge.input[1])
    heads, head_dim = q[1], q[2]
    if shape is None or shape.size != 3 or shape[2] not in (heads * head_dim, -1):
        return None
    nodes += [qk, pv, back, *q[3], *k[3], *v[3], merge]  # merge last: it comes after every other
    default = 1.0 / float(np.sqrt(head_dim))
    return {"q": q[0], "k": k[0], "v": v[0], "out": merge.output[0], "heads": heads,
            "scale": default if scale is None else scale}, nodes


def _replace_nodes(model, removed: set[int], inserted: dict[int, list]) -> None:
    """Drop the nodes whose id is in ``removed`` (and the shape records of what only they computed); put the
    nodes ``inserted[id(anchor)]`` where ``anchor`` was: every input of the new nodes is computed by then."""
    kept = []
    for node in model.graph.node:
        if id(node) in inserted:
            kept.extend(inserted[id(node)])
        elif id(node) not in removed:
            kept.append(node)
    gone = ({out for n in model.graph.node if id(n) in removed for out in n.output}
            - {out for nodes in inserted.values() for n in nodes for out in n.output})
    del model.graph.node[:]
    model.graph.node.extend(kept)
    for info in [vi for vi in model.graph.value_info if vi.name in gone]:
        model.graph.value_info.remove(info)


# ai.onnx ops whose meaning changed between opsets 18 and 23 (not only new types or attributes with the old
# default): a graph holding one keeps its opset, and its attention the contrib node
_CHANGED_BY_OPSET_23 = {"DFT", "GridSample", "GroupNormalization"}
ONNX_ATTENTION_OPSET = 23


def _attention_ir_version() -> int:
    """The ONNX IR version a graph at opset 23 needs (onnx's own table)."""
    from onnx import helper

    return helper.find_min_ir_version_for([helper.make_opsetid("", ONNX_ATTENTION_OPSET)])


@functools.lru_cache(maxsize=None)
def runtime_has_onnx_attention() -> bool:
    """Whether the installed ONNX Runtime runs the standard ``Attention`` op (opset 23) on CPU."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4])
        node = helper.make_node("Attention", ["x", "x", "x"], ["y"], q_num_heads=2, kv_num_heads=2)
        model = helper.make_model(helper.make_graph([node], "probe", [x], [y]), ir_version=_attention_ir_version(),
                                  opset_imports=[helper.make_opsetid("", ONNX_ATTENTION_OPSET)])
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.ones((1, 2, 4), np.float32)})
        return True
    except Exception:  # an older runtime or onnx: the contrib MultiHeadAttention instead
        return False


def _onnx_opset(model) -> int:
    return next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 0)


# reductions whose ``axes`` moved from an attribute to an input at opset 18 (ReduceSum's at 13)
_AXES_BECAME_INPUT_AT_18 = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                            "ReduceMin", "ReduceProd", "ReduceSumSquare"}


def can_use_onnx_attention(model) -> bool:
    """The standard op needs the graph at opset 23: allowed when the graph is at 17 or later (opset 17's
    reductions are rewritten to their current form by :func:`declare_attention_opsets_`), holds no op whose
    meaning changed since and no subgraph, and the runtime has it."""
    opset = _onnx_opset(model)
    if opset < 17 or any(n.op_type in _CHANGED_BY_OPSET_23 or any(a.HasField("g") or a.graphs for a in n.attribute)
                         for n in model.graph.node):
        return False
    return opset >= ONNX_ATTENTION_OPSET or runtime_has_onnx_attention()


def declare_attention_opsets_(model, standard: bool) -> None:
    """The opsets the attention core needs, in place: with ``standard`` (where :func:`can_use_onnx_attention`
    allows it) the graph at opset 23, the reductions' ``axes`` attributes of an opset-17 graph made constant inputs
    as opset 18 wants them; else ORT's contrib domain declared (for ``MultiHeadAttention``)."""
    from onnx import helper, numpy_helper

    if not standard:
        if not any(op.domain == "com.microsoft" for op in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        return
    if _onnx_opset(model) < 18:
        for node in model.graph.node:
            axes = next((a for a in node.attribute if a.name == "axes"), None)
            if node.op_type in _AXES_BECAME_INPUT_AT_18 and axes is not None:
                name = f"{node.name or node.output[0]}_axes"
                model.graph.initializer.append(numpy_helper.from_array(np.array(list(axes.ints), np.int64), name))
                node.attribute.remove(axes)
                node.input.insert(1, name)  # (data, axes)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = max(op.version, ONNX_ATTENTION_OPSET)
    model.ir_version = max(model.ir_version, _attention_ir_version())
    if not any(op.domain in ("", "ai.onnx") for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", ONNX_ATTENTION_OPSET))


def is_attention_core(node) -> bool:
    """An attention-core node :func:`fuse_attention_` writes (standard ``Attention`` or the contrib one)."""
    return ((node.op_type == "Attention" and node.domain in ("", "ai.onnx"))
            or (node.op_type == "MultiHeadAttention" and node.domain == "com.microsoft"))


def fuse_attention_(model) -> int:
    """Replace each unmasked scaled dot-product attention in ``model`` (an ``onnx.ModelProto``) by one node, in
    place; the q/k/v projections are left as they are.

    The node is the standard ``Attention`` (the graph's opset raised to 23) where :func:`can_use_onnx_attention`
    allows it: ONNX Runtime's CPU kernel for it ran a d 256, 4-head, 8-token attention 30 % faster than its
    ``com.microsoft.MultiHeadAttention`` (one thread, batch 64), the node used otherwise.

    Returns:
        the number of attentions fused (0 leaves the model unchanged).
    """
    from onnx import helper

    g = _Graph(model.graph)
    standard = can_use_onnx_attention(model)
    fused, removed = [], set()
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        found = _match(g, softmax)
        if found is None:
            continue
        spec, nodes = found
        inputs, name = [spec["q"], spec["k"], spec["v"]], f"{softmax.name}_Attention"
        if standard:
            core = helper.make_node("Attention", inputs, [spec["out"]], name=name, q_num_heads=spec["heads"],
                                    kv_num_heads=spec["heads"], scale=spec["scale"])
        else:
            core = helper.make_node("MultiHeadAttention", inputs, [spec["out"]], name=name, domain="com.microsoft",
                                    num_heads=spec["heads"], scale=spec["scale"])
        fused.append((nodes[-1], core))  # placed where the merging Reshape was: every input is computed by then
        removed |= {id(n) for n in nodes}
    if not fused:
        return 0
    _replace_nodes(model, removed, {id(anchor): [core] for anchor, core in fused})
    used = {i for n in model.graph.node for i in n.input}
    unused = [i for i in model.graph.initializer if i.name not in used]
    for init in unused:
        model.graph.initializer.remove(init)
    declare_attention_opsets_(model, standard)
    return len(fused)


def _input_made_by(g: _Graph, node, op_type: str):
    """The first node of type ``op_type`` that computes one of ``node``'s inputs, or None."""
    return next((p for p in (g.made_by(i, op_type) for i in node.input) if p is not None), None)


def _packed_projection(g: _Graph, core) -> tuple[dict[str, str], list] | None:
    """The dynamic int8 in-projection feeding the attention ``core``'s q, k and v through one Split into thirds:
    ({xq, x_scale, xzp, w, w_scale, wzp, bias}, the nodes from the product to the split), else None.

    The quantizer writes ``MatMulInteger(xq, wq, xzp, wzp) -> Cast -> Mul(·, Mul(x_scale, w_scale)) -> Add(bias)``.
    """
    split = g.made_by(core.input[0], "Split")
    if split is None or list(split.output) != list(core.input[:3]) or len(core.input) > 3:
        return None
    if any(len(g.consumers.get(o, [])) != 1 for o in split.output) or len(split.input) > 1:
        return None  # explicit split sizes (a second input) may be unequal
    if node_attr(split, "axis") not in (2, -1) or (node_attr(split, "num_outputs") or 3) != 3:
        return None
    add = g.made_by(split.input[0], "Add")
    if add is None or len(g.consumers[add.output[0]]) != 1:
        return None
    mul = _input_made_by(g, add, "Mul")
    bias = next((i for i in add.input if i in g.constants), None)
    if mul is None or bias is None or len(g.consumers[mul.output[0]]) != 1:
        return None
    cast, scales = _input_made_by(g, mul, "Cast"), _input_made_by(g, mul, "Mul")
    if cast is None or scales is None or len(g.consumers[cast.output[0]]) != 1:
        return None
    matmul = g.made_by(cast.input[0], "MatMulInteger")
    if matmul is None or len(matmul.input) != 4 or len(g.consumers[matmul.output[0]]) != 1:
        return None
    xq, wq, xzp, wzp = matmul.input
    quantize = g.made_by(xq, "DynamicQuantizeLinear")
    if quantize is None or quantize.output[2] != xzp:
        return None
    x_scale = quantize.output[1]
    w_scale = next((i for i in scales.input if i != x_scale), None)
    if sorted(scales.input) != sorted([x_scale, w_scale]) or len(g.consumers[scales.output[0]]) != 1:
        return None
    parts = {"xq": xq, "x_scale": x_scale, "xzp": xzp, "w": wq, "w_scale": w_scale, "wzp": wzp, "bias": bias}
    return parts, [scales, matmul, cast, mul, add, split]


def qkv_products(constant: Callable[[str], Any], parts: dict[str, str], outputs: list[str],
                 prefix: str) -> list | None:
    """Nodes computing q, k and v (``outputs``) as three products of one input with the thirds of a packed q/k/v
    weight, each with its own bias (and, int8, its own scales and zero points): the projection without a packed
    output to split. The thirds are ``Split`` nodes on the packed constants, which ONNX Runtime folds when the
    session loads; the stored graph keeps the packed tensors (the artifact matches them to the layer's codes).

    Args:
        constant: a tensor's constant value (numpy) by name, else None.
        parts: int8 (dynamic): ``xq, x_scale, xzp, w, w_scale, wzp, bias`` as the quantizer writes them; float:
            ``x, w, bias``. An empty ``bias`` or ``wzp`` is none.
        outputs: names of q, k and v; prefix: of every name added.
    Returns:
        the nodes, or None when the weight is not a constant (in, 3 x out) or a scale, zero point or bias is not
        per tensor or per q/k/v column.
    """
    from onnx import TensorProto, helper

    weight = constant(parts["w"])
    if weight is None or weight.ndim != 2 or weight.shape[1] % 3:
        return None
    width = weight.shape[1] // 3
    int8 = "xq" in parts
    for name in ("bias", "w_scale", "wzp") if int8 else ("bias",):
        c = constant(parts[name]) if parts[name] else None
        if (c is None and (name == "w_scale" or parts[name])) or (c is not None and c.size not in (
                (1, weight.shape[1]) if name != "bias" else (weight.shape[1],))):
            return None
    sizes = helper.make_tensor(f"{prefix}_thirds", TensorProto.INT64, [3], [width] * 3)
    nodes = [helper.make_node("Constant", [], [sizes.name], name=f"{prefix}_thirds", value=sizes)]

    def thirds(name: str, axis: int) -> list[str]:
        if not parts[name] or constant(parts[name]).size == 1:  # none, or per tensor: shared
            return [parts[name]] * 3
        out = [f"{prefix}_{name}_{j}" for j in range(3)]
        nodes.append(helper.make_node("Split", [parts[name], sizes.name], out, name=f"{prefix}_{name}_split",
                                      axis=axis))
        return out

    w, bias = thirds("w", 1), thirds("bias", 0)
    if int8:
        w_scale, wzp = thirds("w_scale", 0), thirds("wzp", 0)
    for j, out in enumerate(outputs):
        p = f"{prefix}_{'qkv'[j]}"
        unbiased = out if not bias[j] else f"{p}_unbiased"
        if int8:  # the quantizer's pattern, which ONNX Runtime fuses into one MatMulIntegerToFloat
            product = [parts["xq"], w[j], parts["xzp"], wzp[j]]
            nodes += [helper.make_node("Mul", [parts["x_scale"], w_scale[j]], [f"{p}_scale"], name=f"{p}_scale"),
                      helper.make_node("MatMulInteger", product[:4 if wzp[j] else 3], [f"{p}_int32"],
                                       name=f"{p}_MatMulInteger"),
                      helper.make_node("Cast", [f"{p}_int32"], [f"{p}_float"], name=f"{p}_cast",
                                       to=TensorProto.FLOAT),
                      helper.make_node("Mul", [f"{p}_float", f"{p}_scale"], [unbiased], name=f"{p}_rescale")]
        else:
            nodes.append(helper.make_node("MatMul", [parts["x"], w[j]], [unbiased], name=f"{p}_MatMul"))
        if bias[j]:
            nodes.append(helper.make_node("Add", [unbiased, bias[j]], [out], name=f"{p}_bias"))
    return nodes


def split_qkv_projection_(model) -> int:
    """Compute attention's packed int8 q/k/v in-projection as three int8 products, in place, in a model from ORT's
    ``quantize_dynamic`` (after :func:`fuse_attention_`): each packed ``MatMulInteger`` whose output a Split hands
    to an attention core.

    Why: the packed product's output is copied once more by the Split (0.2 ms a layer of a d 256 encoder over 8
    tokens, batch 64, one thread), while three products over all tokens at once, sharing one quantized input,
    compute the same numbers at the same speed. (ONNX Runtime's ``QAttention``, which takes the packed weight
    itself, multiplies it once per sequence and head: products too small for the int8 kernels on short
    sequences, 1.8 against 1.2 ms a layer there.)

    Returns:
        the number of attentions rewritten (0 leaves the model unchanged).
    """
    if _onnx_opset(model) < 13:  # Split's sizes as an input (the thirds) need opset 13
        return 0
    g = _Graph(model.graph)
    removed: set[int] = set()
    inserted: dict[int, list] = {}
    for core in [n for n in model.graph.node if is_attention_core(n)]:
        found = _packed_projection(g, core)
        nodes = None if found is None else qkv_products(g.constants.get, found[0], list(core.input[:3]),
                                                        core.name)
        if nodes is not None:
            removed |= {id(n) for n in found[1]}
            inserted[id(found[1][-1])] = nodes  # where the split was: the attention comes after it
    if inserted:
        _replace_nodes(model, removed, inserted)
    return len(inserted)
