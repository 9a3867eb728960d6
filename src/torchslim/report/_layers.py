"""Per-layer density and bits of a reloaded artifact, for the report's layer table."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim._recurrent import is_recurrent, recurrent_weights
from torchslim.quantize.modules import QuantizedRecurrent

_FLOAT_KINDS = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag)


def _float_matrices(name: str, module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(row name, weight) of a float layer: its ``weight``; attention's in-projection (a bare parameter; its
    out_proj is a Linear of its own); a recurrent layer's matrices, one row each."""
    if isinstance(module, _FLOAT_KINDS):
        return [(name, module.weight)]
    if isinstance(module, nn.MultiheadAttention):
        own = [p for p in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
               if getattr(module, p, None) is not None]
        return [(f"{name}.{p}", getattr(module, p)) for p in own]
    if is_recurrent(module):
        return [(f"{name}.{p}", w) for p, w in recurrent_weights(module).items()]
    return []


@torch.no_grad()
def layer_stats(model: nn.Module, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every weight matrix of a model reloaded from its artifact (Linear, convolution, embedding, attention's
    in-projection, recurrent), float or quantized, in module order.

    Args:
        model: the model as :func:`torchslim.artifact.load_artifact` returned it.
        manifest: its manifest; ``quantization.layers`` gives the stored bits of each quantized layer.
    Returns:
        ``[{name, kind, shape, params, nonzero, nonzero_fraction, bits, encoding, activation_bits}]``; a quantized
        layer is counted on its decoded weight; ``bits`` is 32 and ``encoding`` ``float`` for float layers.
    """
    quantized = manifest.get("quantization", {}).get("layers", {})
    rows = []
    inside = ""  # the modules of a coded recurrent layer (none nests another): its rows are the layer's
    for name, module in model.named_modules():
        if inside and name.startswith(inside):
            continue
        source = getattr(module, "weight_source", None)
        if isinstance(module, QuantizedRecurrent):  # each matrix decoded from its codes
            weights, kind = [(f"{name}.{p}", s()) for p, s in module.weight_sources.items()], module.kind
            inside = f"{name}."
        elif isinstance(source, nn.Module):
            weights, kind = [(name, source())], module.kind  # decoded: (out, in) or (out, in, *kernel)
        else:
            weights, kind = _float_matrices(name, module), type(module).__name__
        spec = quantized.get(name)
        act = (spec or {}).get("input_quant")
        for row, weight in weights:
            nonzero = int(torch.count_nonzero(weight))
            rows.append({"name": row, "kind": kind, "shape": list(weight.shape), "params": weight.numel(),
                         "nonzero": nonzero, "nonzero_fraction": nonzero / max(weight.numel(), 1),
                         "bits": int(spec["bits"]) if spec else 32,
                         "encoding": spec["encoding"] if spec else "float",
                         "activation_bits": act["bits"] if act else None})
    return rows
