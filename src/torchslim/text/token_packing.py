"""A sentence encoder's graph that computes on its real tokens only, not on the padding.

A batch of sentences is padded to its longest one: batches of 32 held-out sentences of the minilm domain, in the
order given, were 40 % real tokens (87 % once sorted by length). Every op of an encoder but attention's core treats
each token on its own: the projections, the FFN, GELU, LayerNorm, the residual adds, dynamic int8's quantization of
activations. :func:`pack_tokens` makes the graph gather the real tokens into one (T, hidden) matrix after the
embeddings' LayerNorm, compute all of that on T rows, and spread them back to (batch, length, hidden) only for
attention's core and for what follows the encoder (pooling):

    (N, L, H) --Gather(real positions)--> (T, H) -- q/k/v products, FFN, LayerNorm, ... on T rows
                                          (T, H) --Gather, per group--> (N_g, L_g, H) -- attention core

Attention's core is the one op that needs sentences laid out with padding, and its cost grows with the square of
the padded length; the batch's sentences are sorted by length and cut into ``groups`` groups, each padded only to
its own longest sentence. Two groups made MiniLM's int8 graph 1.06-1.19x faster on batches of 32 sentences in the
order given than one (about the same once sorted by length), and 7-11 % slower on a sentence alone, whose graph gains
nothing and runs the extra nodes (``benchmarks/minilm.py``'s batches, 1 and 2 threads).

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
# Attention's core runs on this many groups of a batch's sentences, sorted by length, each padded to its own
# longest sentence rather than the batch's: the core's cost grows with the square of the padded length.
GROUPS = 2
_ATTENTION = {"QAttention", "Attention"}  # ORT's fused attention nodes (com.microsoft) that project q/k/v themselves
# ops that compute each token from that token alone, given operands that are the same for every token (rank <= 1)
_PER_TOKEN = {"LayerNormalization", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Relu", "Erf", "Tanh", "Sigmoid",
              "Cast", "Identity", "Sqrt", "Neg", "Add", "Sub", "Mul", "Div", "Pow", "DynamicQuantizeLinear",
              "QuantizeLinear", "DequantizeLinear"}
# products of a token matrix (input 0) with a constant weight (input 1), other inputs per-tensor or per-channel
_PRODUCTS = {"MatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
# ops whose output has the rank of their input 0 (to know a constant-derived weight's rank)
_SAME_RANK = {"DequantizeLinear", "Cast", "Identity", "Split"}


def pack_tokens(onnx_bytes: bytes, groups: int = GROUPS) -> tuple[bytes, int]:
    """(the graph computing on real tokens only, the number of attention layers rewritten); the bytes given when
    nothing could be (0). See :func:`pack_tokens_`."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    layers = pack_tokens_(model, groups)
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


def pack_tokens_(model, groups: int = GROUPS) -> int:
    """Make ``model`` (an ``onnx.ModelProto`` of a sentence encoder: inputs ``input_ids`` and ``attention_mask``
    (N, L), ORT's fused attention) compute on real tokens only, in place; attention's core runs on ``groups``
    groups of the batch's sentences by length, each padded to its own longest.

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
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups: a positive integer, got {groups!r}")
    _rewrite(model, plan, start, groups)
    return len(plan.attentions)


def _rewrite(model, plan: _Plan, start, groups: int) -> None:
    from onnx import TensorProto, helper

    from torchslim.export.attention_fusion import can_use_onnx_attention, declare_attention_opsets_

    standard = can_use_onnx_attention(model)
    make = helper.make_node
    p = "tokens"  # prefix of every name the rewrite adds

    made: set[str] = set()

    def const(name: str, values, dims: Optional[list[int]] = None) -> str:  # int64, 1-D unless dims says
        if name not in made:
            made.add(name)
            dims = [len(values)] if dims is None else dims
            prelude.append(make("Constant", [], [f"{p}/{name}"], name=f"{p}/{name}",
                                value=helper.make_tensor(f"{p}/{name}", TensorProto.INT64, dims, values)))
        return f"{p}/{name}"

    # positions: real (mask 1) ones, packed row of each position (any real row for padding: never read back)
    prelude: list = []
    minus_one, zero, one = const("minus_one", [-1]), const("zero", [0]), const("one", [1])
    const("zero_0d", [0], []), const("one_0d", [1], [])
    prelude += [
        make("Cast", [MASK], [f"{p}/mask_i64_2d"], name=f"{p}/mask_i64_2d", to=TensorProto.INT64),  # (N, L), any int
        make("Reshape", [f"{p}/mask_i64_2d", minus_one], [f"{p}/mask_i64"], name=f"{p}/mask_i64"),  # (N*L,)
        make("NonZero", [f"{p}/mask_i64"], [f"{p}/real_2d"], name=f"{p}/real_2d"),  # (1, T)
        make("Squeeze", [f"{p}/real_2d", zero], [f"{p}/real"], name=f"{p}/real_1d"),  # (T,)
        make("CumSum", [f"{p}/mask_i64", zero], [f"{p}/count"], name=f"{p}/count"),
        make("Sub", [f"{p}/count", one], [f"{p}/row_or_minus"], name=f"{p}/row_or_minus"),
        make("Max", [f"{p}/row_or_minus", zero], [f"{p}/row"], name=f"{p}/row"),  # (N*L,) into 0..T-1
        make("Shape", [MASK], [f"{p}/batch_length"], name=f"{p}/batch_length"),
        make("Reshape", [f"{p}/row", f"{p}/batch_length"], [f"{p}/rows"], name=f"{p}/rows"),  # (N, L)
    ]
    prelude += _group_prelude(groups, standard, const)

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
            nodes += _attention(node, plan.attentions[id(node)][1], standard, groups)
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


def _group_prelude(groups: int, standard: bool, const) -> list:
    """Nodes computing, once per batch, how attention's core sees the packed rows: sentences sorted by length and
    cut into ``groups`` runs; for group g, ``tokens/g{g}/index`` (N_g, L_g), the packed row of each sentence's
    j-th real token (its last one repeated into the padding), its padding mask, and ``tokens/unpack`` (T,): the
    row of the groups' concatenated core outputs that holds each real token.

    A sentence's real tokens are consecutive packed rows (the packing keeps the batch's order), so any padding
    side works. A core over zero sentences is not something every runtime accepts, so a group that a batch of
    fewer sentences than groups leaves empty holds one sentence as a single padding position: its core costs one
    row, and the unpacking reads none of it.
    """
    from onnx import TensorProto, helper

    make, p = helper.make_node, "tokens"
    zero, one, minus_one = f"{p}/zero", f"{p}/one", f"{p}/minus_one"
    first_g, next_g = const("group_numbers", list(range(groups))), const("group_ends", list(range(1, groups + 1)))
    nodes = [
        # every sentence in order of length, longest first: its packed rows, padded to the batch's longest
        make("ReduceSum", [f"{p}/mask_i64_2d", one], [f"{p}/lengths"], name=f"{p}/lengths", keepdims=0),  # (N,)
        make("CumSum", [f"{p}/lengths", zero], [f"{p}/starts"], name=f"{p}/starts", exclusive=1),
        make("Shape", [f"{p}/lengths"], [f"{p}/n"], name=f"{p}/n"),
        make("TopK", [f"{p}/lengths", f"{p}/n"], [f"{p}/sorted_lengths", f"{p}/order"], name=f"{p}/order",
             axis=0, largest=1, sorted=1),
        make("Gather", [f"{p}/starts", f"{p}/order"], [f"{p}/sorted_starts"], name=f"{p}/sorted_starts", axis=0),
        make("Shape", [f"{p}/real"], [f"{p}/t"], name=f"{p}/t"),
        make("Sub", [f"{p}/t", one], [f"{p}/last_row"], name=f"{p}/last_row"),
        make("Gather", [f"{p}/sorted_lengths", zero], [f"{p}/longest"], name=f"{p}/longest", axis=0),  # (1,)
        make("Max", [f"{p}/longest", one], [f"{p}/width"], name=f"{p}/width"),  # a row even for padding only
        make("Squeeze", [f"{p}/width", zero], [f"{p}/width_0d"], name=f"{p}/width_0d"),
        make("Range", [f"{p}/zero_0d", f"{p}/width_0d", f"{p}/one_0d"], [f"{p}/j"], name=f"{p}/j"),  # (L,)
        make("Unsqueeze", [f"{p}/j", zero], [f"{p}/j_row"], name=f"{p}/j_row"),  # (1, L)
        make("Unsqueeze", [f"{p}/sorted_lengths", one], [f"{p}/lengths_col"], name=f"{p}/lengths_col"),  # (N, 1)
        make("Unsqueeze", [f"{p}/sorted_starts", one], [f"{p}/starts_col"], name=f"{p}/starts_col"),
        make("Sub", [f"{p}/lengths_col", one], [f"{p}/last_col"], name=f"{p}/last_col"),
        make("Min", [f"{p}/j_row", f"{p}/last_col"], [f"{p}/offset"], name=f"{p}/offset"),
        make("Add", [f"{p}/starts_col", f"{p}/offset"], [f"{p}/index_raw"], name=f"{p}/index_raw"),
        make("Min", [f"{p}/index_raw", f"{p}/last_row"], [f"{p}/index_high"], name=f"{p}/index_high"),
        make("Max", [f"{p}/index_high", zero], [f"{p}/index"], name=f"{p}/index"),  # (N, L)
        make("Less", [f"{p}/j_row", f"{p}/lengths_col"], [f"{p}/valid"], name=f"{p}/valid"),  # (N, L)
        # group g: sorted sentences [a, b), a = min(g*N // G, N-1), b = max((g+1)*N // G, a+1), padded to L_g,
        # its first sentence's length; all groups' bounds at once, as (G, 3) slice starts and ends
        make("Mul", [f"{p}/n", first_g], [f"{p}/a_n"], name=f"{p}/a_n"),
        make("Div", [f"{p}/a_n", const("groups", [groups])], [f"{p}/a_floor"], name=f"{p}/a_floor"),
        make("Mul", [f"{p}/n", next_g], [f"{p}/b_n"], name=f"{p}/b_n"),
        make("Div", [f"{p}/b_n", f"{p}/groups"], [f"{p}/b_floor"], name=f"{p}/b_floor"),
        make("Greater", [f"{p}/b_floor", f"{p}/a_floor"], [f"{p}/filled"], name=f"{p}/filled"),  # (G,)
        make("Sub", [f"{p}/n", one], [f"{p}/n_minus_one"], name=f"{p}/n_minus_one"),
        make("Min", [f"{p}/a_floor", f"{p}/n_minus_one"], [f"{p}/a"], name=f"{p}/a"),
        make("Add", [f"{p}/a", one], [f"{p}/a_plus_one"], name=f"{p}/a_plus_one"),
        make("Max", [f"{p}/b_floor", f"{p}/a_plus_one"], [f"{p}/b"], name=f"{p}/b"),
        make("Gather", [f"{p}/sorted_lengths", f"{p}/a"], [f"{p}/group_longest"], name=f"{p}/group_longest",
             axis=0),
        make("Where", [f"{p}/filled", f"{p}/group_longest", one], [f"{p}/group_width_raw"],
             name=f"{p}/group_width_raw"),
        make("Max", [f"{p}/group_width_raw", one], [f"{p}/group_width"], name=f"{p}/group_width"),
        make("Unsqueeze", [f"{p}/a", one], [f"{p}/a_col"], name=f"{p}/a_col"),
        make("Unsqueeze", [f"{p}/b", one], [f"{p}/b_col"], name=f"{p}/b_col"),
        make("Unsqueeze", [f"{p}/group_width", one], [f"{p}/width_col"], name=f"{p}/width_col"),
        make("Mul", [f"{p}/a_col", const("zero_2d", [0], [1, 1])], [f"{p}/zero_col"], name=f"{p}/zero_col"),
        make("Concat", [f"{p}/a_col", f"{p}/zero_col", f"{p}/zero_col"], [f"{p}/slice_starts"],
             name=f"{p}/slice_starts", axis=1),  # (G, 3): sentence, query, key
        make("Concat", [f"{p}/b_col", f"{p}/width_col", f"{p}/width_col"], [f"{p}/slice_ends"],
             name=f"{p}/slice_ends", axis=1),
    ]
    if standard:  # boolean (N, 1, L, L): key j of sentence n is real; ORT wants the query axis spelled out
        nodes += [
            make("Unsqueeze", [f"{p}/valid", const("axes_1_2", [1, 2])], [f"{p}/keys_4d"], name=f"{p}/keys_4d"),
            make("Concat", [f"{p}/n", one, f"{p}/width", f"{p}/width"], [f"{p}/mask_shape"], name=f"{p}/mask_shape",
                 axis=0),
            make("Expand", [f"{p}/keys_4d", f"{p}/mask_shape"], [f"{p}/attn_mask"], name=f"{p}/attn_mask"),
        ]
    flat_index, flat_valid = [], []
    for g in range(groups):
        q, k = f"{p}/g{g}", const(f"g{g}", [g], [])  # a scalar index: Gather drops the group axis
        nodes += [
            make("Gather", [f"{p}/slice_starts", k], [f"{q}/starts"], name=f"{q}/starts", axis=0),  # (3,)
            make("Gather", [f"{p}/slice_ends", k], [f"{q}/ends"], name=f"{q}/ends", axis=0),
            make("Slice", [f"{q}/starts", zero, const("two", [2]), zero], [f"{q}/starts_2"], name=f"{q}/starts_2"),
            make("Slice", [f"{q}/ends", zero, f"{p}/two", zero], [f"{q}/ends_2"], name=f"{q}/ends_2"),
            make("Slice", [f"{p}/index", f"{q}/starts_2", f"{q}/ends_2", const("axes_0_1", [0, 1])],
                 [f"{q}/index"], name=f"{q}/index"),  # (N_g, L_g)
            make("Slice", [f"{p}/valid", f"{q}/starts_2", f"{q}/ends_2", f"{p}/axes_0_1"], [f"{q}/valid_given"],
                 name=f"{q}/valid_given"),
            make("Gather", [f"{p}/filled", k], [f"{q}/filled"], name=f"{q}/filled", axis=0),  # a scalar
            make("And", [f"{q}/valid_given", f"{q}/filled"], [f"{q}/valid"], name=f"{q}/valid"),
            make("Reshape", [f"{q}/index", minus_one], [f"{q}/index_flat"], name=f"{q}/index_flat"),
            make("Reshape", [f"{q}/valid", minus_one], [f"{q}/valid_flat"], name=f"{q}/valid_flat"),
        ]
        flat_index.append(f"{q}/index_flat")
        flat_valid.append(f"{q}/valid_flat")
        if standard:  # the batch's mask cut to the group (a query or key past a sentence's end is padding)
            nodes += [
                make("Slice", [f"{p}/attn_mask", f"{q}/starts", f"{q}/ends", const("axes_0_2_3", [0, 2, 3])],
                     [f"{q}/attn_mask_given"], name=f"{q}/attn_mask_given"),
                make("And", [f"{q}/attn_mask_given", f"{q}/filled"], [f"{q}/attn_mask"], name=f"{q}/attn_mask"),
            ]
        else:  # (N_g, L_g) int32
            nodes.append(make("Cast", [f"{q}/valid"], [f"{q}/key_padding_mask"], name=f"{q}/key_padding_mask",
                              to=TensorProto.INT32))
    # the row of the concatenated core outputs that holds each packed token
    nodes += [
        make("Concat", flat_index, [f"{p}/all_index"], name=f"{p}/all_index", axis=0),  # (M,)
        make("Concat", flat_valid, [f"{p}/all_valid"], name=f"{p}/all_valid", axis=0),
        make("Size", [f"{p}/all_index"], [f"{p}/m"], name=f"{p}/m"),
        make("Range", [f"{p}/zero_0d", f"{p}/m", f"{p}/one_0d"], [f"{p}/out_rows"], name=f"{p}/out_rows"),
        make("Compress", [f"{p}/all_index", f"{p}/all_valid"], [f"{p}/real_rows"], name=f"{p}/real_rows", axis=0),
        make("Compress", [f"{p}/out_rows", f"{p}/all_valid"], [f"{p}/real_out"], name=f"{p}/real_out", axis=0),
        make("ConstantOfShape", [f"{p}/t"], [f"{p}/unpack_base"], name=f"{p}/unpack_base",
             value=helper.make_tensor("zero", TensorProto.INT64, [1], [0])),
        make("ScatterElements", [f"{p}/unpack_base", f"{p}/real_rows", f"{p}/real_out"], [f"{p}/unpack"],
             name=f"{p}/unpack", axis=0),
    ]
    return nodes


def _attention(node, products: list, standard: bool, groups: int) -> list:
    """One fused attention as its q/k/v ``products`` on the packed rows; the core runs on each group of sentences
    (gathered to (N_g, L_g, W)), and its outputs, concatenated, are gathered back to the packed rows under the
    node's output name."""
    from onnx import helper

    make = helper.make_node
    name = node.name or node.output[0]
    heads = node_attr(node, "num_heads", 0)
    scale = node_attr(node, "scale", 0.0)
    extra = {"scale": float(scale)} if scale else {}
    out = node.output[0]
    nodes, flats = list(products), []
    for g in range(groups):
        q = f"tokens/g{g}"
        rows = [f"{name}/{c}/g{g}" for c in "qkv"]
        nodes += [make("Gather", [f"{name}/{c}/packed", f"{q}/index"], [r], name=r, axis=0)
                  for c, r in zip("qkv", rows)]
        core = f"{name}/core/g{g}"
        if standard:
            nodes.append(make("Attention", rows + [f"{q}/attn_mask"], [core], name=core,
                              q_num_heads=heads, kv_num_heads=heads, **extra))
        else:
            nodes.append(make("MultiHeadAttention", rows + ["", f"{q}/key_padding_mask"], [core], name=core,
                              domain="com.microsoft", num_heads=heads, **extra))
        nodes.append(make("Flatten", [core], [f"{core}/flat"], name=f"{core}/flat", axis=2))
        flats.append(f"{core}/flat")
    nodes.append(make("Concat", flats, [f"{name}/core"], name=f"{name}/core", axis=0))
    nodes.append(make("Gather", [f"{name}/core", "tokens/unpack"], [out], name=f"{name}/unpack", axis=0))
    return nodes
