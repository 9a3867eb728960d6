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

from torchslim.quantize._select import set_submodule
from torchslim.quantize.granularity import granularity_from_json, granularity_to_json
from torchslim.quantize.modules import (ActivationFakeQuant, CodebookWeight, FakeQuantWeight, PackedWeight,
                                        QuantizedLayer, layer_kind)

_INT8_ONNX = "_torchslim_int8_onnx"  # attribute holding (onnx bytes, state fingerprint)


def _describe_source(source: nn.Module) -> dict[str, Any]:
    if isinstance(source, PackedWeight):
        return {"encoding": "affine", "bits": source.bits, "granularity": granularity_to_json(source.granularity)}
    if isinstance(source, CodebookWeight):
        return {"encoding": "codebook", "bits": source.bits}
    if isinstance(source, FakeQuantWeight):  # mid-QAT: the float weight itself is stored
        return {"encoding": "fake_quant", "bits": source.bits, "granularity": granularity_to_json(source.granularity),
                "symmetric": source.symmetric}
    raise ValueError(f"cannot describe weight source {type(source).__name__}")


def describe_quantized_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{layer name: {kind, shape, encoding, bits, granularity, input_quant}} of every QuantizedLayer."""
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, QuantizedLayer):
            continue
        source = module.weight_source
        shape = list(source.weight.shape) if isinstance(source, FakeQuantWeight) else list(source.shape)
        entry = {"kind": module.kind, "shape": shape, **_describe_source(source)}
        q = module.input_quant
        entry["input_quant"] = None if q is None else {"bits": q.bits, "mode": q.mode}
        layers[name] = entry
    return layers


def weight_shapes(layers: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Shape-only (meta) placeholders ``{name}.weight`` for the float layers the quantized ones replaced,
    so a freshly built model can be resized to pruned shapes before the skeletons go in."""
    return {f"{name}.weight": torch.empty(spec["shape"], device="meta") for name, spec in layers.items()}


def _skeleton_source(spec: dict[str, Any]) -> nn.Module:
    shape, bits = tuple(spec["shape"]), int(spec["bits"])
    # built from zeros: the right tensor shapes; the stored values are loaded next
    if spec["encoding"] == "affine":
        return PackedWeight(torch.zeros(shape), bits, granularity_from_json(spec["granularity"]))
    if spec["encoding"] == "codebook":
        return CodebookWeight(torch.zeros(2 ** bits - 1), torch.zeros(shape, dtype=torch.uint8), bits)
    if spec["encoding"] == "fake_quant":
        return FakeQuantWeight(torch.zeros(shape), bits, granularity_from_json(spec["granularity"]),
                               bool(spec["symmetric"]))
    raise ValueError(f"unknown weight encoding {spec['encoding']!r}")


def rebuild_quantized_layers_(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    """Replace each described float layer of ``model`` (already at its stored shape) by a QuantizedLayer
    skeleton whose tensors have the stored shapes; ``load_state_dict`` then fills them in."""
    for name, spec in layers.items():
        layer = model.get_submodule(name)
        if layer_kind(layer) != spec["kind"]:
            raise ValueError(f"layer {name} is a {type(layer).__name__}, the artifact stored a {spec['kind']}")
        iq = spec.get("input_quant")
        act = None if iq is None else ActivationFakeQuant(int(iq["bits"]), mode=iq["mode"])
        set_submodule(model, name, QuantizedLayer(layer, _skeleton_source(spec), act))


def state_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def attach_int8_onnx(model: nn.Module, data: bytes) -> None:
    """Let the int8 ONNX model travel with ``model`` (saved into its artifact) while the weights stay as now."""
    setattr(model, _INT8_ONNX, (data, state_fingerprint(model)))


def int8_onnx_of(model: nn.Module) -> bytes | None:
    """The int8 ONNX model attached to ``model``, or None when there is none or the model changed since
    (e.g. fine-tuned after quantization): a stale int8 graph would not compute what the module does."""
    attached = getattr(model, _INT8_ONNX, None)
    if attached is None:
        return None
    data, fingerprint = attached
    return data if fingerprint == state_fingerprint(model) else None
