"""An ONNX model's weights apart from its graph, and back; and which ONNX weights are which state-dict tensors.

Why: an artifact stores tensors once, through its own per-tensor codecs. An int8 ONNX model holds the int8
weights, scales and zero points the runtime computes with; the artifact keeps those (not fp32 copies of the same
weights) and a torch reload rebuilds the encoder's Linear weights from them, dequantized, with
:func:`dequantized_state_dict` and the map :func:`onnx_weight_map` recorded at export time.
"""

from __future__ import annotations

import numpy as np
import torch

MIN_BYTES = 1024  # smaller initializers (shapes, scalars) stay in the graph


def split_initializers(onnx_bytes: bytes, min_bytes: int = MIN_BYTES) -> tuple[bytes, dict[str, np.ndarray]]:
    """(graph bytes with the large initializers emptied, {initializer name: array}).

    Only initializers stored as ``raw_data`` move out (what exporters and ORT's tools write); their name, type
    and shape stay in the graph, so :func:`join_initializers` puts the same bytes back.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    arrays: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if init.HasField("raw_data") and len(init.raw_data) >= min_bytes and init.name not in arrays:
            arrays[init.name] = numpy_helper.to_array(init).copy()
            init.ClearField("raw_data")
    return model.SerializeToString(), arrays


def join_initializers(graph_bytes: bytes, arrays: dict[str, np.ndarray]) -> bytes:
    """Inverse of :func:`split_initializers`: the original model bytes."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(graph_bytes)
    missing = {i.name for i in model.graph.initializer if not i.HasField("raw_data")} - set(arrays)
    empty = [i.name for i in model.graph.initializer if i.name in missing and _elements(i) > 0
             and not (i.float_data or i.int32_data or i.int64_data or i.double_data or i.uint64_data)]
    if empty:
        raise ValueError(f"no array for initializer(s) {', '.join(sorted(empty)[:5])}")
    for init in model.graph.initializer:
        if init.name in arrays:
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            array = np.asarray(arrays[init.name])
            if array.dtype != dtype or tuple(array.shape) != tuple(init.dims):
                raise ValueError(f"initializer {init.name}: array {array.dtype}{list(array.shape)} does not match "
                                 f"the graph's {np.dtype(dtype)}{list(init.dims)}")
            init.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    return model.SerializeToString()


def _elements(init) -> int:
    return int(np.prod(init.dims)) if len(init.dims) else 1


def onnx_weight_map(onnx_bytes: bytes, encoder: torch.nn.Module) -> dict[str, dict]:
    """Which initializer of an fp32 (fused or not) ONNX export holds each 2-D weight of ``encoder``.

    Returns:
        {state-dict name: {"initializer": name, "columns": [start, stop] or None}}: a Linear weight is
        ``initializer[:, start:stop].T`` (MatMul weights are (in, out); a fused Attention concatenates Q, K, V
        along the columns); an embedding table (columns None) is the initializer as it is. Quantizers keep the
        initializer's name as a prefix (``<name>_quantized``, ``<name>_scale``), so the map holds for the int8
        models made from this export.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    inits = [(i.name, numpy_helper.to_array(i)) for i in model.graph.initializer if len(i.dims) == 2]
    names = {name for name, _ in inits}
    found: dict[str, dict] = {}
    for key, tensor in encoder.state_dict().items():
        if not key.endswith(".weight") or tensor.ndim != 2:
            continue
        if "embeddings" in key:
            if key in names:  # a Gather table keeps its state-dict name
                found[key] = {"initializer": key, "columns": None}
            continue
        w_t = tensor.detach().cpu().numpy().T  # (in, out)
        for name, array in inits:
            if array.shape[0] != w_t.shape[0]:
                continue
            hit = _column_block(array, w_t)
            if hit is not None:
                found[key] = {"initializer": name, "columns": [hit, hit + w_t.shape[1]]}
                break
    return found


def _column_block(array: np.ndarray, block: np.ndarray) -> int | None:
    """Start column where ``block`` sits, exactly, inside ``array`` (None if nowhere)."""
    width = block.shape[1]
    for start in range(0, array.shape[1] - width + 1, width):
        if np.array_equal(array[:, start:start + width], block):
            return start
    return None


def dequantized_state_dict(onnx_bytes: bytes, weight_map: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The encoder's Linear weights as the int8 model computes with them: (q - zero_point) * scale, per channel.

    Args:
        onnx_bytes: the int8 (or fp32) model, initializers joined back.
        weight_map: :func:`onnx_weight_map` of the fp32 export the int8 model was made from.
    Returns:
        {state-dict name: float32 tensor (out, in)} to load with ``load_state_dict(strict=False)``.
    """
    import onnx
    from onnx import numpy_helper

    arrays = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(onnx_bytes).graph.initializer}
    out = {}
    for key, where in weight_map.items():
        name = where["initializer"]
        if name + "_quantized" in arrays:
            q = arrays[name + "_quantized"].astype(np.float32)  # (in, out)
            scale = np.asarray(arrays[name + "_scale"], np.float32)
            zero = np.asarray(arrays.get(name + "_zero_point", np.zeros_like(scale)), np.float32)
            weight = (q - zero) * scale  # per-tensor: scalars; per-channel: (out,) along the columns
        elif name in arrays:
            weight = arrays[name].astype(np.float32)
        else:
            raise KeyError(f"{key}: initializer {name} is not in the model")
        if where["columns"] is None:
            out[key] = torch.from_numpy(np.ascontiguousarray(weight))
            continue
        start, stop = where["columns"]
        out[key] = torch.from_numpy(np.ascontiguousarray(weight[:, start:stop].T))
    return out
