"""Per-layer density and bits of a reloaded artifact, for the report's layer table."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_FLOAT_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@torch.no_grad()
def layer_stats(model: nn.Module, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Linear/Conv layer of a model reloaded from its artifact, float or quantized, in module order.

    Args:
        model: the model as :func:`torchslim.artifact.load_artifact` returned it.
        manifest: its manifest; ``quantization.layers`` gives the stored bits of each quantized layer.
    Returns:
        ``[{name, kind, shape, params, nonzero, nonzero_fraction, bits, encoding, activation_bits}]``; a quantized
        layer is counted on its decoded weight; ``bits`` is 32 and ``encoding`` ``float`` for float layers.
    """
    quantized = manifest.get("quantization", {}).get("layers", {})
    rows = []
    for name, module in model.named_modules():
        source = getattr(module, "weight_source", None)
        if isinstance(source, nn.Module):
            weight, kind = source(), module.kind  # decoded: (out, in) or (out, in, *kernel)
        elif isinstance(module, _FLOAT_KINDS):
            weight, kind = module.weight, type(module).__name__
        else:
            continue
        spec = quantized.get(name)
        nonzero = int(torch.count_nonzero(weight))
        act = (spec or {}).get("input_quant")
        rows.append({"name": name, "kind": kind, "shape": list(weight.shape), "params": weight.numel(),
                     "nonzero": nonzero, "nonzero_fraction": nonzero / max(weight.numel(), 1),
                     "bits": int(spec["bits"]) if spec else 32,
                     "encoding": spec["encoding"] if spec else "float",
                     "activation_bits": act["bits"] if act else None})
    return rows
