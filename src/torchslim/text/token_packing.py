"""A sentence encoder's graph that computes on its real tokens only, not on the padding.

A batch of sentences is padded to its longest one: batches of 32 held-out sentences of the minilm domain, in the
order given, were 40 % real tokens (87 % once sorted by length). Every op of an encoder but attention's core treats
each token on its own: the projections, the FFN, GELU, LayerNorm, the residual adds, dynamic int8's quantization of
activations. :func:`pack_tokens` makes the graph gather the real tokens into one (T, hidden) matrix after the
embeddings' LayerNorm, compute all of that on T rows, and spread them back to (batch, length, hidden) only for
attention's core and for what follows the encoder (pooling):

    (N, L, H) --Gather(real positions)--> (T, H) -- q/k/v products, FFN, LayerNorm, ... on T rows
                                          (T, H) --Gather(row of each position)--> (N, L, H) -- attention core

ORT's fused attention node (``QAttention`` for int8, ``com.microsoft.Attention`` for fp32) projects q, k and v
itself, over every padded position; here the projection becomes three products on the packed rows (the weight's
thirds are ``Split`` nodes on the stored constants, which ONNX Runtime folds at load) and the core ONNX's standard
``Attention`` (opset 23) with the padding as a boolean mask, or ORT's ``MultiHeadAttention`` with a key padding
mask where the runtime or the graph does not allow the standard op.

fp32 graphs compute the same numbers (to float rounding). Dynamic int8 takes each activation's range over the real
tokens only: padding no longer widens it.
"""

from __future__ import annotations

from typing import Optional

from torchslim.export.attention_fusion import node_attr

__all__ = ["pack_tokens", "pack_tokens_"]

MASK = "attention_mask"
_ATTENTION = {"QAttention", "Attention"}  # ORT's fused attention nodes (com.microsoft) that project q/k/v themselves
# ops that compute each token from that token alone, given operands that are the same for every token (rank <= 1)
_PER_TOKEN = {"LayerNormalization", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Relu", "Erf", "Tanh", "Sigmoid",
              "Cast", "Identity", "Sqrt", "Neg", "Add", "Sub", "Mul", "Div", "Pow", "DynamicQuantizeLinear",
              "QuantizeLinear", "DequantizeLinear"}
# products of a token matrix (input 0) with a constant weight (input 1), other inputs per-tensor or per-channel
_PRODUCTS = {"MatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
# ops whose output has the rank of their input 0 (to know a constant-derived weight's rank)
_SAME_RANK = {"DequantizeLinear", "Cast", "Identity", "Split"}


def pack_tokens(onnx_bytes: bytes) -> tuple[bytes, int]:
    """(the graph computing on real tokens only, the number of attention layers rewritten); the bytes given when
    nothing could be (0). See :func:`pack_tokens_`."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    layers = pack_tokens_(model)
    return (model.SerializeToString() if layers else onnx_bytes), layers


class _Plan:
    """What the rewrite of one graph decides, before anything changes: which tensors hold one row per token."""

    def __init__(self, model):
        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self._tensors = {i.name: i for i in graph.initializer}  # TensorProto of each constant, read when needed
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self._tensors[node.output[0]] = node.attribute[0].t
        self.rank: dict[str, int] = {name: len(t.dims) for name, t in self._tensors.items()}
        self.static = set(self.rank)  # computed from constants only
        self.small: dict[str, int] = {}  # the same for every token: rank <= 1 (constant or computed per batch)
        self.tokens: set[str] = set()  # one row per token (packed after the rewrite)
        self.attentions: dict[int, tuple] = {}  # id of each fused attention rewritten: (it, its q/k/v products)
        self.restored: set[str] = set()  # token tensors some op needs as (N, L, ...)
        self.padded_readers: set[int] = set()  # ids of the nodes that read them so

    def constant(self, name: str):
        """The value of a constant tensor (initializer or Constant node), else None."""
        from onnx import numpy_helper

        return numpy_helper.to_array(self._tensors[name]) if name in self._tensors else None

    def derived_from(self, name: str, source: str) -> bool:
        """Whether ``source`` (a graph input) is among ``name``'s ancestors."""
        seen, todo = set(), [name]
        while todo and len(seen) < 10_000:
            n = todo.pop()
            if n == source:
                return True
            if n in seen or n not in self.producer:
                continue
            seen.add(n)
            todo.extend(i for i in self.producer[n].input if i)
        return False

    def note_constant_or_small(self, node) -> None:
        """Ranks of what constants and per-batch scalars compute (a dequantized weight, a product of scales)."""
        inputs = [i for i in node.input if i]
        if inputs and all(i in self.static for i in inputs):
            self.static.update(node.output)
            if node.op_type in _SAME_RANK and inputs[0] in self.rank:
                for out in node.output:
                    self.rank[out] = self.rank[inputs[0]]
        small = [self._small_rank(i) for i in inputs]
        if inputs and all(r is not None for r in small) and node.op_type in _PER_TOKEN:
            for out in node.output:
                self.small[out] = max(small)

    def _small_rank(self, name: str) -> Optional[int]:
        if name in self.small:
            return self.small[name]
        rank = self.rank.get(name) if name in self.static else None
        return rank if rank is not None and rank <= 1 else None

    def runs_per_token(self, node) -> bool:
        """Whether ``node`` (reading a token tensor) computes each token's row from that row alone."""
        inputs = list(node.input)
        if node.op_type in _PRODUCTS:
            weight = inputs[1] if len(inputs) > 1 else ""
            return (inputs[0] in self.tokens and weight in self.static and self.rank.get(weight) == 2
                    and all(not i or self._small_rank(i) is not None for i in inputs[2:]))
        if node.op_type not in _PER_TOKEN:
            return False
        if node.op_type == "LayerNormalization" and node_attr(node, "axis", -1) not in (-1, 2):
            return False
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):  # per-tensor only (an axis would be wrong)
            return inputs[0] in self.tokens and all(self._small_rank(i) == 0 for i in inputs[1:] if i)
        return all(not i or i in self.tokens or self._small_rank(i) is not None for i in inputs)

    def attention_products(self, node) -> Optional[list]:
        """For a fused self-attention over the encoder's padding mask (no past state, rotary embedding or causal
        mask, a packed q/k/v weight in equal thirds): the nodes computing its q, k and v from the packed rows
        (``<name>/q/packed``, ...), else None."""
        from torchslim.export.attention_fusion import qkv_products

        if node.domain != "com.microsoft" or node.op_type not in _ATTENTION or node.input[0] not in self.tokens:
            return None
        if any(node_attr(node, key, 0) for key in ("unidirectional", "do_rotary")):
            return None
        sizes = node_attr(node, "qkv_hidden_sizes")
        if sizes and len(set(sizes)) != 1:
            return None
        inputs = list(node.input) + [""] * 9
        if node.op_type == "QAttention":  # xq, w, bias, x_scale, w_scale, mask, x_zero_point, w_zero_point, past
            mask, rest = inputs[5], inputs[8:]
            parts = {"xq": inputs[0], "w": inputs[1], "bias": inputs[2], "x_scale": inputs[3], "w_scale": inputs[4],
                     "xzp": inputs[6], "wzp": inputs[7]}
        else:  # x, w, bias, mask, past, attention bias, past length
            mask, rest = inputs[3], inputs[4:]
            parts = {"x": inputs[0], "w": inputs[1], "bias": inputs[2]}
        if any(rest) or not mask or not self.derived_from(mask, MASK):  # no mask: padding attended to, keep it so
            return None
        name = node.name or node.output[0]
        return qkv_products(self.constant, parts, [f"{name}/{c}/packed" for c in "qkv"], name)


def _first_layer_norm(model, plan: _Plan):
    """The embeddings' LayerNormalization: the first one, if it normalises what the token ids looked up."""
    ids = [i.name for i in model.graph.input if i.name != MASK]
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            ok = node_attr(node, "axis", -1) in (-1, 2) and any(plan.derived_from(node.input[0], i) for i in ids)
            return node if ok else None
    return None


def pack_tokens_(model) -> int:
    """Make ``model`` (an ``onnx.ModelProto`` of a sentence encoder: inputs ``input_ids`` and ``attention_mask``
    (N, L), ORT's fused attention) compute on real tokens only, in place.

    Returns:
        the number of attention layers rewritten; 0 leaves the model unchanged (no fused attention over the
        padding mask, or no embeddings' LayerNorm to start from).
    """
    if MASK not in {i.name for i in model.graph.input}:
        return 0
    plan = _Plan(model)
    start = _first_layer_norm(model, plan)
    if start is None:
        return 0
    began = False
    for node in model.graph.node:
        if node is start:
            began = True
            plan.tokens.add(node.output[0])
            continue
        if not began or not any(i in plan.tokens for i in node.input):
            plan.note_constant_or_small(node)
            continue
        products = plan.attention_products(node)
        if products is not None:
            plan.attentions[id(node)] = (node, products)
            plan.tokens.add(node.output[0])
        elif plan.runs_per_token(node):
            outputs = node.output[:1] if node.op_type == "DynamicQuantizeLinear" else node.output
            plan.tokens.update(outputs)
            if node.op_type == "DynamicQuantizeLinear":  # its scale and zero point: one per batch
                plan.small.update({node.output[1]: 0, node.output[2]: 0})
        else:
            plan.restored.update(i for i in node.input if i in plan.tokens)
            plan.padded_readers.add(id(node))
    if not plan.attentions or plan.tokens & {o.name for o in model.graph.output}:
        return 0
    _rewrite(model, plan, start)
    return len(plan.attentions)


def _rewrite(model, plan: _Plan, start) -> None:
    from onnx import TensorProto, helper

    from torchslim.export.attention_fusion import can_use_onnx_attention, declare_attention_opsets_

    standard = can_use_onnx_attention(model)
    make = helper.make_node
    p = "tokens"  # prefix of every name the rewrite adds

    def const(name: str, values) -> str:
        prelude.append(make("Constant", [], [f"{p}/{name}"], name=f"{p}/{name}",
                            value=helper.make_tensor(f"{p}/{name}", TensorProto.INT64, [len(values)], values)))
        return f"{p}/{name}"

    # positions: real (mask 1) ones, packed row of each position (any real row for padding: never read back)
    prelude: list = []
    minus_one, zero, one = const("minus_one", [-1]), const("zero", [0]), const("one", [1])
    prelude += [
        make("Reshape", [MASK, minus_one], [f"{p}/mask_flat"], name=f"{p}/mask_flat"),  # (N*L,)
        make("NonZero", [f"{p}/mask_flat"], [f"{p}/real_2d"], name=f"{p}/real_2d"),  # (1, T)
        make("Squeeze", [f"{p}/real_2d", zero], [f"{p}/real"], name=f"{p}/real_1d"),  # (T,)
        make("Cast", [f"{p}/mask_flat"], [f"{p}/mask_i64"], name=f"{p}/mask_i64", to=TensorProto.INT64),  # any int
        make("CumSum", [f"{p}/mask_i64", zero], [f"{p}/count"], name=f"{p}/count"),
        make("Sub", [f"{p}/count", one], [f"{p}/row_or_minus"], name=f"{p}/row_or_minus"),
        make("Max", [f"{p}/row_or_minus", zero], [f"{p}/row"], name=f"{p}/row"),  # (N*L,) into 0..T-1
        make("Shape", [MASK], [f"{p}/batch_length"], name=f"{p}/batch_length"),
        make("Reshape", [f"{p}/row", f"{p}/batch_length"], [f"{p}/rows"], name=f"{p}/rows"),  # (N, L)
    ]
    if standard:  # boolean (N, 1, L, L): key j of sentence n is real; ORT wants the query axis spelled out
        prelude += [
            make("Cast", [MASK], [f"{p}/keys"], name=f"{p}/keys", to=TensorProto.BOOL),
            make("Unsqueeze", [f"{p}/keys", const("axes_1_2", [1, 2])], [f"{p}/keys_4d"], name=f"{p}/keys_4d"),
            make("Gather", [f"{p}/batch_length", one], [f"{p}/length"], name=f"{p}/length", axis=0),
            make("Gather", [f"{p}/batch_length", zero], [f"{p}/batch"], name=f"{p}/batch", axis=0),
            make("Concat", [f"{p}/batch", one, f"{p}/length", f"{p}/length"], [f"{p}/mask_shape"],
                 name=f"{p}/mask_shape", axis=0),
            make("Expand", [f"{p}/keys_4d", f"{p}/mask_shape"], [f"{p}/attn_mask"], name=f"{p}/attn_mask"),
        ]
    else:  # (N, L) int32
        prelude.append(make("Cast", [MASK], [f"{p}/key_padding_mask"], name=f"{p}/key_padding_mask",
                            to=TensorProto.INT32))

    def pack(padded: str, packed: str) -> list:  # (N, L, W) -> (T, W)
        return [make("Flatten", [padded], [f"{packed}/flat"], name=f"{packed}/flat", axis=2),
                make("Gather", [f"{packed}/flat", f"{p}/real"], [packed], name=f"{packed}/pack", axis=0)]

    def restore(packed: str, padded: str) -> list:  # (T, W) -> (N, L, W): row of each position
        return [make("Gather", [packed, f"{p}/rows"], [padded], name=padded, axis=0)]

    nodes = []
    for node in model.graph.node:
        if node is start:
            out = node.output[0]
            node.output[0] = f"{out}/embedded"
            nodes += prelude + [node] + pack(f"{out}/embedded", out)
        elif id(node) in plan.attentions:
            nodes += _attention(node, plan.attentions[id(node)][1], standard, restore, pack)
        elif id(node) in plan.padded_readers:
            for k, name in enumerate(node.input):
                if name in plan.restored:
                    node.input[k] = f"{name}/padded"
            nodes.append(node)
        else:
            if node.op_type == "LayerNormalization" and node.output[0] in plan.tokens:
                for a in node.attribute:
                    if a.name == "axis":
                        a.i = -1  # the token tensors are (T, H) now
            nodes.append(node)
    # restorations right after what they restore is computed
    ordered = []
    for node in nodes:
        ordered.append(node)
        for out in node.output:
            if out in plan.restored:
                ordered += restore(out, f"{out}/padded")
    del model.graph.node[:]
    model.graph.node.extend(_without_unused(ordered, {o.name for o in model.graph.output}))
    read = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in read]:
        model.graph.initializer.remove(init)
    # shape records of tensors that now have one row per token are wrong: drop them
    stale = [vi for vi in model.graph.value_info if vi.name in plan.tokens]
    for vi in stale:
        model.graph.value_info.remove(vi)
    declare_attention_opsets_(model, standard)


def _without_unused(nodes: list, graph_outputs: set[str]) -> list:
    """``nodes`` less those whose outputs nothing reads (what computed the fused nodes' own padding mask)."""
    while True:
        read = graph_outputs | {i for n in nodes for i in n.input}
        kept = [n for n in nodes if any(o in read for o in n.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def _attention(node, products: list, standard: bool, restore, pack) -> list:
    """One fused attention as its q/k/v ``products`` on the packed rows, restored to (N, L, W) for the core, whose
    output is packed again under the node's output name."""
    from onnx import helper

    name = node.name or node.output[0]
    padded = [f"{name}/{c}/padded" for c in "qkv"]
    nodes = list(products)
    for c, rows in zip("qkv", padded):
        nodes += restore(f"{name}/{c}/packed", rows)
    heads = node_attr(node, "num_heads", 0)
    scale = node_attr(node, "scale", 0.0)
    extra = {"scale": float(scale)} if scale else {}
    out = node.output[0]
    if standard:
        nodes.append(helper.make_node("Attention", padded + ["tokens/attn_mask"], [f"{out}/padded"],
                                      name=f"{name}/core", q_num_heads=heads, kv_num_heads=heads, **extra))
    else:
        nodes.append(helper.make_node("MultiHeadAttention", padded + ["", "tokens/key_padding_mask"],
                                      [f"{out}/padded"], name=f"{name}/core", domain="com.microsoft",
                                      num_heads=heads, **extra))
    return nodes + pack(f"{out}/padded", out)
