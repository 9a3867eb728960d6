"""What an artifact needs to rebuild a quantized model: a compact description of each quantized layer, the
skeletons built from it (before the stored tensors are loaded), and the int8 ONNX model that travels with it.

The description holds no per-element data: kind, shape, bits, granularity and activation quantizer per layer.
The integer codes, scales, zero points and codebooks are ordinary tensors of the model's state dict.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from torchslim._parametrized import baked_weights, rebake_
from torchslim._recurrent import RECURRENT
from torchslim.quantize._fold import folded_batchnorms, refold_
from torchslim.quantize._select import set_submodule
from torchslim.quantize.attention import ProjectedMultiheadAttention, project_attention_
from torchslim.quantize.granularity import from_blocks, granularity_from_json, granularity_to_json, to_blocks
from torchslim.quantize.modules import (ActivationFakeQuant, CodebookWeight, FakeQuantWeight, PackedWeight,
                                        QuantizedLayer, QuantizedRecurrent, layer_kind)

_INT8_ONNX = "_torchslim_int8_onnx"  # attribute holding (onnx bytes, shared weights or None, state fingerprint)


def _describe_source(source: nn.Module) -> dict[str, Any]:
    if isinstance(source, PackedWeight):
        return {"encoding": "affine", "bits": source.bits, "granularity": granularity_to_json(source.granularity)}
    if isinstance(source, CodebookWeight):
        return {"encoding": "codebook", "bits": source.bits}
    if isinstance(source, FakeQuantWeight):  # mid-QAT: the float weight itself is stored
        described = {"encoding": "fake_quant", "bits": source.bits,
                     "granularity": granularity_to_json(source.granularity), "symmetric": source.symmetric}
        return {**described, "reduce_range": True} if source.reduce_range else described
    raise ValueError(f"cannot describe weight source {type(source).__name__}")


def describe_quantized_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{layer name: {kind, shape, encoding, bits, granularity, input_quant}} of every QuantizedLayer; a layer that
    decodes another's weight source (a tied weight) names it in ``tied_to``; a QuantizedRecurrent gives
    ``weights`` {matrix name: shape} instead of ``shape`` (its matrices are coded alike)."""
    layers, first_holder = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedRecurrent):
            sources = dict(module.weight_sources.items())
            layers[name] = {"kind": module.kind, "weights": {w: list(s.shape) for w, s in sources.items()},
                            **_describe_source(next(iter(sources.values()))), "input_quant": None}
            continue
        if not isinstance(module, QuantizedLayer):
            continue
        source = module.weight_source
        shape = list(source.weight.shape) if isinstance(source, FakeQuantWeight) else list(source.shape)
        entry = {"kind": module.kind, "shape": shape, **_describe_source(source)}
        q = module.input_quant
        entry["input_quant"] = None if q is None else {"bits": q.bits, "mode": q.mode}
        leader = first_holder.setdefault(id(source), name)
        if leader != name:
            entry["tied_to"] = leader
        layers[name] = entry
    return layers


def describe_structure(model: nn.Module) -> dict[str, Any]:
    """How ``model`` differs in structure from the architecture it was built as, before any tensor is loaded:
    ``baked_parametrizations`` [weights made plain, :mod:`torchslim._parametrized`], ``folded_batchnorm``
    {BatchNorm: the convolution it was folded into}, ``projected_attention`` [attention modules whose projections
    became Linear modules], ``tensorless_norms`` (:func:`tensorless_norm_sizes`, whether pruned or not: nothing else
    records them). Empty when there is nothing to record."""
    structure: dict[str, Any] = {}
    baked = baked_weights(model)
    if baked:
        structure["baked_parametrizations"] = baked
    folded = folded_batchnorms(model)
    if folded:
        structure["folded_batchnorm"] = folded
    projected = [name for name, m in model.named_modules() if isinstance(m, ProjectedMultiheadAttention)]
    if projected:
        structure["projected_attention"] = projected
    sizes = tensorless_norm_sizes(model)
    if sizes:
        structure["tensorless_norms"] = sizes
    return structure


def tensorless_norm_sizes(model: nn.Module) -> dict[str, list[int]]:
    """{name: normalized shape} of each LayerNorm, {name: [channels]} of each GroupNorm without a weight: no stored
    tensor says their size, which structured pruning changes with the channels they normalize."""
    sizes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm) and m.weight is None:
            sizes[name] = list(m.normalized_shape)
        elif isinstance(m, nn.GroupNorm) and m.weight is None:
            sizes[name] = [m.num_channels]
    return sizes


def _resize_tensorless_norms_(model: nn.Module, sizes: dict[str, list[int]]) -> None:
    for name, size in sizes.items():
        m = model.get_submodule(name) if name else model
        if isinstance(m, nn.LayerNorm) and m.weight is None:
            m.normalized_shape = tuple(int(n) for n in size)
        elif isinstance(m, nn.GroupNorm) and m.weight is None and len(size) == 1:
            m.num_channels = int(size[0])
        else:
            raise ValueError(f"{name or 'the model'} is no LayerNorm or GroupNorm without a weight of that rank")


def rebuild_structure_(model: nn.Module, structure: dict[str, Any]) -> None:
    """Give a freshly built model the structure :func:`describe_structure` recorded (shapes follow the tensors)."""
    rebake_(model, list(structure.get("baked_parametrizations", [])))
    refold_(model, dict(structure.get("folded_batchnorm", {})))
    _resize_tensorless_norms_(model, dict(structure.get("tensorless_norms", {})))
    names = set(structure.get("projected_attention", []))
    missing = names - set(project_attention_(model, names))
    if missing:
        raise ValueError(f"no self-attention module {sorted(missing)[0]} to project in the built model")


def sync_attention_heads_(model: nn.Module) -> None:
    """After resizing to pruned shapes: each projected attention's head count from its in-projection's rows."""
    for m in model.modules():
        if isinstance(m, ProjectedMultiheadAttention):
            m.num_heads = m.in_proj.weight.shape[0] // (3 * m.head_dim)


def split_source_key(key: str) -> tuple[str, str | None, str] | None:
    """(layer, recurrent matrix or None, tensor) of a state-dict key inside a quantized layer's weight source
    (``fc1.weight_source.packed`` -> ``("fc1", None, "packed")``, ``lstm.weight_sources.weight_ih_l0.packed`` ->
    ``("lstm", "weight_ih_l0", "packed")``); None for any other key."""
    if ".weight_source." in key:
        layer, _, leaf = key.rpartition(".weight_source.")
        return layer, None, leaf
    if ".weight_sources." in key:
        layer, _, rest = key.partition(".weight_sources.")
        matrix, _, leaf = rest.partition(".")
        return layer, matrix, leaf
    return None


def weight_shapes(layers: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Shape-only (meta) placeholders ``{name}.weight`` for the float layers the quantized ones replaced,
    so a freshly built model can be resized to pruned shapes before the skeletons go in."""
    return {f"{name}.{weight}": torch.empty(shape, device="meta") for name, spec in layers.items()
            for weight, shape in (spec.get("weights") or {"weight": spec["shape"]}).items()}


def _skeleton_source(spec: dict[str, Any]) -> nn.Module:
    shape, bits = tuple(spec["shape"]), int(spec["bits"])
    # built from zeros: the right tensor shapes; the stored values are loaded next
    if spec["encoding"] == "affine":
        return PackedWeight(torch.zeros(shape), bits, granularity_from_json(spec["granularity"]))
    if spec["encoding"] == "codebook":
        return CodebookWeight(torch.zeros(2 ** bits - 1), torch.zeros(shape, dtype=torch.uint8), bits)
    if spec["encoding"] == "fake_quant":
        return FakeQuantWeight(torch.zeros(shape), bits, granularity_from_json(spec["granularity"]),
                               bool(spec["symmetric"]), bool(spec.get("reduce_range")))
    raise ValueError(f"unknown weight encoding {spec['encoding']!r}")


def decode_weight(spec: dict[str, Any], source_state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float weight a described quantized layer computes with, from its ``weight_source`` tensors alone
    (no model needed: ``inspect`` reads an artifact without building its architecture)."""
    source = _skeleton_source(spec)
    source.load_state_dict(source_state)
    with torch.no_grad():
        return source().detach()


def rebuild_quantized_layers_(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    """Replace each described float layer of ``model`` (already at its stored shape) by a QuantizedLayer
    skeleton whose tensors have the stored shapes; ``load_state_dict`` then fills them in. A layer ``tied_to``
    another shares that layer's skeleton source, so the reloaded model decodes one tensor for both, as saved."""
    sources: dict[str, nn.Module] = {}
    for name, spec in sorted(layers.items(), key=lambda item: "tied_to" in item[1]):  # leaders first
        layer = model.get_submodule(name)
        if spec.get("weights") is not None:
            if not isinstance(layer, RECURRENT) or type(layer).__name__ != spec["kind"]:
                raise ValueError(f"layer {name} is a {type(layer).__name__}, the artifact stored a {spec['kind']}")
            matrices = {w: _skeleton_source({**spec, "shape": shape}) for w, shape in spec["weights"].items()}
            set_submodule(model, name, QuantizedRecurrent(layer, matrices))
            continue
        if layer_kind(layer) != spec["kind"]:
            raise ValueError(f"layer {name} is a {type(layer).__name__}, the artifact stored a {spec['kind']}")
        iq = spec.get("input_quant")
        act = None if iq is None else ActivationFakeQuant(int(iq["bits"]), mode=iq["mode"])
        leader = spec.get("tied_to")
        if leader is None:
            source = sources[name] = _skeleton_source(spec)
        elif leader in sources:
            source = sources[leader]
        else:
            raise ValueError(f"layer {name} is tied to {leader}, which holds no weight source of its own")
        set_submodule(model, name, QuantizedLayer(layer, source, act))


def state_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def attach_int8_onnx(model: nn.Module, data: bytes, shared: dict[str, Any] | None = None) -> None:
    """Let the int8 ONNX model travel with ``model`` (saved into its artifact) while the weights stay as now.

    Args:
        data: the serialized ONNX model, or with ``shared`` the model stripped by :func:`strip_int8_weights`.
        shared: how to put the stripped weights back from ``model``'s codes (done when the ONNX is asked for).
    """
    setattr(model, _INT8_ONNX, (data, shared, state_fingerprint(model)))


def int8_onnx_of(model: nn.Module) -> bytes | None:
    """The int8 ONNX model attached to ``model``, or None when there is none or the model changed since
    (e.g. fine-tuned after quantization): a stale int8 graph would not compute what the module does.

    Raises:
        ValueError: a stripped model rebuilt from the weights is not the one whose sha256 was recorded.
    """
    attached = getattr(model, _INT8_ONNX, None)
    if attached is None:
        return None
    data, shared, fingerprint = attached
    if fingerprint != state_fingerprint(model):
        return None
    return data if shared is None else join_int8_weights(data, shared, model)


# ---- the int8 weights are stored once: in the state dict, not again in the ONNX model -----------------------------

def _layer_codes(model: nn.Module, name: str) -> torch.Tensor | None:
    """int8 weight values (code - zero point) of layer ``name``, as ONNX Runtime's weight initializers hold
    them (weight shape), or None when the layer holds no 8-bit codes that fit int8."""
    try:
        source = getattr(model.get_submodule(name), "weight_source", None)
    except AttributeError:
        return None
    return _int8_codes(source)


def _int8_codes(source: Any) -> torch.Tensor | None:
    """A weight source's int8 values (code - zero point) in the weight's shape, or None when it holds no 8-bit
    codes that fit int8."""
    if not isinstance(source, PackedWeight) or source.bits != 8:
        return None
    blocks = to_blocks(source.codes(), source.granularity).to(torch.int16)  # (B, L)
    centred = blocks - source.zero_point.to(torch.int16)[:, None]
    if centred.numel() == 0 or int(centred.min()) < -128 or int(centred.max()) > 127:
        return None
    return from_blocks(centred, torch.Size(source.shape), source.granularity).to(torch.int8).cpu()


def full_range_int8_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose int8 weights reach beyond [-64, 64] (quantized without ``reduce_range``)."""
    found = []
    for name, module in model.named_modules():
        codes = _layer_codes(model, name) if isinstance(getattr(module, "weight_source", None), PackedWeight) \
            else None
        if codes is not None and int(codes.abs().max()) > 64:
            found.append(name)
    return found


def _initializer_codes(model: nn.Module, name: str, transpose: bool) -> torch.Tensor | None:
    codes = _layer_codes(model, name)
    if codes is None or not transpose:
        return codes
    return codes.t().contiguous() if codes.dim() == 2 else None


_MIN_SHARED = 16  # elements: smaller initializers (shape constants, scalars) are not worth a record

# ONNX's GRU and LSTM hold their gates in another order than torch: GRU (z, r, h) for torch's (r, z, n), LSTM
# (i, o, f, c) for torch's (i, f, g, o); and each layer's W, R and B stack the directions, B both biases.
_ONNX_GATES = {nn.GRU: (1, 0, 2), nn.LSTM: (0, 3, 1, 2)}


def _onnx_stack(rnn: nn.RNNBase, matrix) -> torch.Tensor:
    """``matrix(suffix)`` of each direction ("" and "_reverse"), its gates in ONNX's order, stacked as ONNX's
    GRU/LSTM initializers stack the directions."""
    order = _ONNX_GATES[type(rnn)]
    per_direction = []
    for suffix in ("", "_reverse") if rnn.bidirectional else ("",):
        blocks = matrix(suffix).chunk(len(order))
        per_direction.append(torch.cat([blocks[i] for i in order]))
    return torch.stack(per_direction).contiguous()


def _rnn_tensor(rnn: nn.RNNBase, layer: int, part: str) -> torch.Tensor:
    """Layer ``layer``'s ``W``, ``R`` or ``B`` initializer as ONNX's GRU/LSTM operator holds it, from ``rnn``'s
    parameters: the exporter folds the gate reordering into constants that repeat the state dict's weights."""
    if part == "B":  # both biases, each in ONNX's gate order
        return torch.cat([_onnx_stack(rnn, lambda d, w=w: getattr(rnn, f"bias_{w}_l{layer}{d}").detach().cpu())
                          for w in ("ih", "hh")], dim=1)
    kind = "ih" if part == "W" else "hh"
    return _onnx_stack(rnn, lambda d: getattr(rnn, f"weight_{kind}_l{layer}{d}").detach().cpu())


def _rnn_codes(coded: QuantizedRecurrent, layer: int, part: str) -> torch.Tensor | None:
    """Layer ``layer``'s int8 ``W`` or ``R`` as ONNX Runtime's DynamicQuantizeLSTM holds it (directions stacked,
    each transposed: (input, 4 * hidden)), from the codes of a QuantizedRecurrent LSTM; None without int8 codes."""
    kind = "ih" if part == "W" else "hh"
    codes = {d: _int8_codes(coded.weight_sources[f"weight_{kind}_l{layer}{d}"])
             for d in (("", "_reverse") if coded.rnn.bidirectional else ("",))}
    if any(c is None for c in codes.values()):
        return None
    return _onnx_stack(coded.rnn, lambda d: codes[d]).transpose(1, 2).contiguous()


def _rnn_parts(model: nn.Module):
    """(module name, layer, part, tensor) of every GRU/LSTM layer's ONNX initializers that ``model`` determines:
    a float layer's W, R and B; the biases of a layer whose matrices are coded (a QuantizedRecurrent's: the int8
    ones of an LSTM are :func:`_rnn_codes`)."""
    for name, module in model.named_modules():
        if type(module) not in _ONNX_GATES or getattr(module, "proj_size", 0):
            continue
        weight = getattr(module, "weight_ih_l0", None)
        float_weights = isinstance(weight, torch.Tensor) and weight.dtype == torch.float32
        parts = (("W", "R") if float_weights else ()) + (("B",) if module.bias else ())
        for layer in range(module.num_layers):
            for part in parts:
                yield name, layer, part, _rnn_tensor(module, layer, part)


def _tensors_by_content(model: nn.Module) -> dict[tuple[int, tuple[int, ...], bytes], dict[str, Any]]:
    """{(ONNX data type, shape, bytes): how to rebuild it from ``model``} for every tensor an int8 ONNX model may
    repeat: each layer's 8-bit codes as int8 (``{"layer", "transpose"}``), each GRU/LSTM layer's gate weights and
    biases in ONNX's layout (``{"rnn", "rnn_layer", "part"}``), and each float32 tensor of the state dict, float
    layers' weights, biases, norms and scales (``{"tensor", "transpose"}``); 2-D ones also transposed (MatMul's
    right side).
    """
    import onnx

    table: dict[tuple[int, tuple[int, ...], bytes], dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(getattr(module, "weight_source", None), PackedWeight):
            for transpose in (False, True):
                codes = _initializer_codes(model, name, transpose)
                if codes is not None:
                    key = (onnx.TensorProto.INT8, tuple(codes.shape), codes.numpy().tobytes())
                    table.setdefault(key, {"layer": name, "transpose": transpose})
    for name, layer, part, t in _rnn_parts(model):
        entry = (onnx.TensorProto.FLOAT, tuple(t.shape), t.numpy().tobytes())
        table.setdefault(entry, {"rnn": name, "rnn_layer": layer, "part": part})
    for name, module in model.named_modules():
        if isinstance(module, QuantizedRecurrent) and type(module.rnn) is nn.LSTM:
            for layer in range(module.rnn.num_layers):
                for part in ("W", "R"):
                    codes = _rnn_codes(module, layer, part)
                    if codes is not None:
                        entry = (onnx.TensorProto.INT8, tuple(codes.shape), codes.numpy().tobytes())
                        table.setdefault(entry, {"rnn_codes": name, "rnn_layer": layer, "part": part})
    for key, tensor in model.state_dict().items():  # any shape: a float conv weight is repeated as it is
        if tensor.dtype != torch.float32 or tensor.numel() < _MIN_SHARED:
            continue
        for transpose in (False, True) if tensor.dim() == 2 else (False,):
            t = (tensor.t() if transpose else tensor).detach().cpu().contiguous()
            entry = (onnx.TensorProto.FLOAT, tuple(t.shape), t.numpy().tobytes())
            table.setdefault(entry, {"tensor": key, "transpose": transpose})
    return table


def _shared_bytes(model: nn.Module, spec: dict[str, Any]) -> bytes:
    """The bytes an initializer recorded by :func:`strip_int8_weights` held, from ``model``'s tensors."""
    if "rnn_codes" in spec:
        try:
            coded = model.get_submodule(spec["rnn_codes"])
        except AttributeError:
            coded = None
        codes = None
        if isinstance(coded, QuantizedRecurrent) and type(coded.rnn) is nn.LSTM and spec["part"] in ("W", "R") \
                and 0 <= spec["rnn_layer"] < coded.rnn.num_layers:
            codes = _rnn_codes(coded, spec["rnn_layer"], spec["part"])
        if codes is None:
            raise ValueError(f"the model has no int8 LSTM {spec['rnn_codes']} for the ONNX model")
        return codes.numpy().tobytes()
    if "rnn" in spec:
        try:
            rnn = model.get_submodule(spec["rnn"])
        except AttributeError:
            rnn = None
        if type(rnn) not in _ONNX_GATES or spec["part"] not in ("W", "R", "B") \
                or not 0 <= spec["rnn_layer"] < rnn.num_layers:
            raise ValueError(f"the model has no recurrent layer {spec['rnn']} for the ONNX model")
        return _rnn_tensor(rnn, spec["rnn_layer"], spec["part"]).numpy().tobytes()
    transpose = bool(spec["transpose"])
    if "layer" in spec:
        codes = _initializer_codes(model, spec["layer"], transpose)
        if codes is None:
            raise ValueError(f"layer {spec['layer']} holds no int8 codes for the ONNX model")
        return codes.numpy().tobytes()  # int8, little-endian by definition
    state = model.state_dict()
    if spec["tensor"] not in state:
        raise ValueError(f"the model has no tensor {spec['tensor']} for the ONNX model")
    t = state[spec["tensor"]].detach().cpu()
    return (t.t() if transpose else t).contiguous().numpy().tobytes()


def compact_onnx(data: bytes) -> bytes:
    """The same ONNX model without intermediate shape annotations (``value_info``, which ONNX Runtime infers),
    every initializer in ``raw_data`` (the one field :func:`strip_int8_weights` empties and refills)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(data)
    proto.graph.ClearField("value_info")
    for init in proto.graph.initializer:
        if not init.HasField("raw_data") and init.data_location != onnx.TensorProto.EXTERNAL:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init), init.name))
    return proto.SerializeToString()


def strip_int8_weights(data: bytes, model: nn.Module) -> tuple[bytes, dict[str, Any]] | None:
    """The int8 ONNX model without the initializers ``model``'s state already holds (the int8 codes, float
    biases, norms and scales), and how to put them back: ``(stripped bytes, {"initializers": {initializer: {"layer"
    or "tensor", "transpose"}}, "sha256": of the full model})``, or None when nothing is shared.

    Initializers are matched by content (data type, shape and bytes), not by name: exporters name a transposed
    weight whatever they like (``val_42``), and a match is byte-identical by construction.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(data)
    table = _tensors_by_content(model)
    shared: dict[str, dict[str, Any]] = {}
    for init in proto.graph.initializer:
        if init.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.FLOAT) or not init.HasField("raw_data"):
            continue
        array = numpy_helper.to_array(init)
        if array.size < _MIN_SHARED:
            continue
        spec = table.get((init.data_type, tuple(init.dims), array.tobytes()))
        if spec is not None:
            shared[init.name] = spec
            init.ClearField("raw_data")
    if not shared:
        return None
    stripped = proto.SerializeToString()
    recipe = {"initializers": dict(sorted(shared.items())), "sha256": hashlib.sha256(data).hexdigest()}
    # protobuf re-serialization is not promised to be byte-stable: store stripped only when it rebuilds exactly
    try:
        join_int8_weights(stripped, recipe, model)
    except ValueError:
        return None
    return stripped, recipe


def join_int8_weights(stripped: bytes, shared: dict[str, Any], model: nn.Module) -> bytes:
    """Inverse of :func:`strip_int8_weights`: the full int8 ONNX model, checked against its recorded sha256."""
    import onnx

    proto = onnx.load_from_string(stripped)
    for init in proto.graph.initializer:
        spec = shared["initializers"].get(init.name)
        if spec is not None:
            init.raw_data = _shared_bytes(model, spec)
    data = proto.SerializeToString()
    if hashlib.sha256(data).hexdigest() != shared["sha256"]:
        raise ValueError("the int8 ONNX model rebuilt from the stored weights does not match its recorded sha256")
    return data
