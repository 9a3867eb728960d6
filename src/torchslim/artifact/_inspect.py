"""What an artifact holds, layer by layer: shapes, sparsity, bits, encodings and the bytes each takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from torchslim.artifact._format import MANIFEST, PAYLOAD, _open, load_artifact


def _owner(key: str) -> str:
    """The module a state-dict key belongs to (``fc1.weight_source.packed`` -> ``fc1``)."""
    if ".weight_source." in key:
        return key.split(".weight_source.")[0]
    return key.rpartition(".")[0] or key


def _weight_key(owner: str, table: dict[str, Any], layers: dict[str, Any]) -> str | None:
    for key in (f"{owner}.weight_source.packed", f"{owner}.weight_source.weight", f"{owner}.weight"):
        if key in table and (key.endswith(".weight") or owner in layers):
            return key
    return None


def describe_artifact(path: str | Path, *, base_dir: str | Path = ".") -> dict[str, Any]:
    """Per-layer storage and totals of an artifact (what ``torchslim inspect`` prints).

    Args:
        path: the artifact folder.
        base_dir: folder a user factory module named in the architecture is imported from.
    Returns:
        ``{"layers": [{name, shape, params, nonzero, sparsity, bits, encoding, bytes}], "totals": {params,
        nonzero, bytes: {total, manifest (header file + compressed manifest), tensors (tensor data), container
        (safetensors framing), files: {name: bytes}}}, "manifest": the plain manifest}``.
        A layer's ``bytes`` are its tensors' stored bytes (before entropy coding when the manifest says the
        tensor data was entropy-coded as a whole, ``"entropy": "payload"``).
    """
    from torchslim.evaluate import count_params

    folder = Path(path)
    manifest, data, manifest_bytes = _open(folder)
    model, _ = load_artifact(folder, base_dir=base_dir)
    table, layers = manifest["tensors"], manifest.get("quantization", {}).get("layers", {})
    groups: dict[str, list[str]] = {}
    for key in model.state_dict():
        if key in table:
            groups.setdefault(_owner(key), []).append(key)
    rows = []
    for owner, keys in groups.items():
        weight_key = _weight_key(owner, table, layers)
        entry = table[weight_key or keys[0]]
        module = model.get_submodule(owner) if owner in dict(model.named_modules()) else None
        weight = getattr(module, "weight", None) if weight_key else None
        if isinstance(weight, torch.Tensor):
            weight = weight.detach()
            shape, params, nonzero = list(weight.shape), weight.numel(), int(torch.count_nonzero(weight))
        else:
            shape, params, nonzero = entry["shape"], None, None
        bits = layers[owner]["bits"] if owner in layers else getattr(torch, entry["dtype"]).itemsize * 8
        rows.append({"name": owner, "shape": shape, "params": params, "nonzero": nonzero,
                     "sparsity": None if not params else 1 - nonzero / params, "bits": bits,
                     "encoding": entry["encoding"] + ("+zstd" if entry.get("zstd") else ""),
                     "bytes": sum(int(table[k]["bytes"]) for k in keys)})
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    blob = manifest_bytes + len(data)
    params, nonzero = count_params(model)
    totals = {"params": params, "nonzero": nonzero,
              "bytes": {"total": sum(files.values()), "manifest": manifest_bytes + files[MANIFEST],
                        "tensors": len(data), "container": files[PAYLOAD] - blob, "files": files}}
    return {"layers": rows, "totals": totals, "manifest": manifest}
