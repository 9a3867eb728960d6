"""What an artifact holds, layer by layer: shapes, sparsity, bits, encodings and the bytes each takes.

Read from the manifest and the stored tensors alone: inspecting an artifact builds no model, so it imports no
code, whatever architecture the manifest names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from torchslim.artifact._format import MANIFEST, PAYLOAD, _decode_state, _open, stored_files
from torchslim.artifact._trust import ArtifactError

_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm buffers: not parameters


def _owner(key: str) -> str:
    """The module a state-dict key belongs to (``fc1.weight_source.packed`` -> ``fc1``); a recurrent layer's matrix
    is its own row, coded (``lstm.weight_sources.weight_ih_l0.packed``) or not (``lstm.weight_ih_l0``), both
    ``lstm.weight_ih_l0``; so is a float attention's in-projection (``attn.in_proj_weight``)."""
    from torchslim.quantize._layout import split_source_key

    split = split_source_key(key)
    if split is not None:
        return split[0] if split[1] is None else f"{split[0]}.{split[1]}"
    owner, _, leaf = key.rpartition(".")
    if owner and (leaf.startswith("weight_") or leaf.endswith("proj_weight")):
        return key  # a float recurrent layer's matrix (``lstm.weight_ih_l0``), as coded; attention's in-projection
    return owner or key


def _natural(name: str) -> list[Any]:
    """Sort key that puts ``layers.2`` before ``layers.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _is_parameter(key: str, tensor: torch.Tensor) -> bool:
    """Counted as the run counts parameters: not BatchNorm's statistics, nor an activation quantizer's observed
    range (``input_quant.lo``/``hi``: buffers, as the statistics are)."""
    owner, _, leaf = key.rpartition(".")
    return tensor.is_floating_point() and leaf not in _STATISTICS and not owner.endswith("input_quant")


def _quantized_spec(owner: str, layers: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """(the description of the quantized weight a row shows, the prefix of its source's keys), or None."""
    if owner in layers and layers[owner].get("weights") is None:
        return layers[owner], f"{owner}.weight_source."
    layer, _, matrix = owner.rpartition(".")
    weights = layers.get(layer, {}).get("weights") or {}
    if matrix in weights:  # a recurrent layer's matrix
        return {**layers[layer], "shape": weights[matrix]}, f"{layer}.weight_sources.{matrix}."
    return None


def _layer_weight(owner: str, keys: list[str], state: dict[str, torch.Tensor], layers: dict[str, Any],
                  tied: dict[str, str]) -> tuple[str, torch.Tensor | None, int | None]:
    """(the table key that stores the layer's weight, its decoded float value or None: none stored, or a tied
    weight, counted with the layer that stores it; its bits when quantized)."""
    if (owner in layers and "tied_to" in layers[owner]) or f"{owner}.weight" in tied:
        return keys[0], None, None
    quantized = _quantized_spec(owner, layers)
    if quantized is not None:
        spec, prefix = quantized
        from torchslim.quantize._layout import decode_weight

        source_state = {k[len(prefix):]: state[k] for k in keys if k.startswith(prefix)}
        stored = next((f"{prefix}{leaf}" for leaf in ("packed", "weight") if f"{prefix}{leaf}" in state), keys[0])
        return stored, decode_weight(spec, source_state), int(spec["bits"])
    for key in (f"{owner}.weight", owner):  # a layer's weight, or a recurrent matrix that is its own row
        if key in state and state[key].is_floating_point():
            return key, state[key], None
    return keys[0], None, None


def describe_artifact(path: str | Path) -> dict[str, Any]:
    """Per-layer storage and totals of an artifact (what ``torchslim inspect`` prints).

    Returns:
        ``{"layers": [{name, shape, params, nonzero, sparsity, bits, encoding, bytes}], "totals": {params,
        nonzero, bytes: {total, manifest (header file + compressed manifest), tensors (tensor data), container
        (safetensors framing), files: {name: bytes}}}, "manifest": the plain manifest}``.
        A layer's ``bytes`` are its tensors' stored bytes (before entropy coding when the manifest says the
        tensor data was entropy-coded as a whole, ``"entropy": "payload"``). Parameters are the float tensors
        other than BatchNorm statistics, a quantized weight counted by its logical elements.
    """
    folder = Path(path)
    manifest, data, manifest_bytes = _open(folder)
    table, layers = manifest["tensors"], manifest.get("quantization", {}).get("layers", {})
    state = _decode_state(folder, manifest, data)
    groups: dict[str, list[str]] = {}
    for key in sorted(table, key=_natural):
        groups.setdefault(_owner(key), []).append(key)
    rows, total, total_nonzero = [], 0, 0
    for owner, keys in sorted(groups.items(), key=lambda item: _natural(item[0])):
        try:
            weight_key, weight, quantized_bits = _layer_weight(owner, keys, state, layers, manifest.get("tied", {}))
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise ArtifactError(folder, f"layer {owner}: the stored tensors do not fit its description "
                                        f"({' '.join(str(exc).split())[:120]})") from None
        entry = table[weight_key]
        if weight is not None:
            shape, params, nonzero = list(weight.shape), weight.numel(), int(torch.count_nonzero(weight))
        else:
            shape, params, nonzero = entry["shape"], None, None
        others = [k for k in keys if ".weight_source" not in k and (weight is None or k != weight_key)]
        total += (params or 0) + sum(state[k].numel() for k in others if _is_parameter(k, state[k]))
        total_nonzero += (nonzero or 0) + sum(int(torch.count_nonzero(state[k])) for k in others
                                              if _is_parameter(k, state[k]))
        bits = quantized_bits if quantized_bits is not None else getattr(torch, entry["dtype"]).itemsize * 8
        rows.append({"name": owner, "shape": shape, "params": params, "nonzero": nonzero,
                     "sparsity": None if not params else 1 - nonzero / params, "bits": bits,
                     "encoding": entry["encoding"] + ("+zstd" if entry.get("zstd") else ""),
                     "bytes": sum(int(table[k]["bytes"]) for k in keys)})
    files = {name: (folder / name).stat().st_size for name in stored_files(manifest)}
    blob = manifest_bytes + len(data)
    if manifest.get("text") is not None:  # a sentence encoder's int8 weights live in its graph: count the encoder
        total, total_nonzero = _text_params(folder, (manifest, data))
    totals = {"params": total, "nonzero": total_nonzero,
              "bytes": {"total": sum(files.values()), "manifest": manifest_bytes + files[MANIFEST],
                        "tensors": len(data), "container": files[PAYLOAD] - blob, "files": files}}
    return {"layers": rows, "totals": totals, "manifest": manifest}


def _text_params(folder: Path, opened: tuple[dict[str, Any], bytes]) -> tuple[int, int]:
    """(parameters, non-zero) of a sentence-embedding artifact's encoder as its run counts them: rebuilt from the
    artifact's own tensors and graph (nothing imported, nothing outside the folder read)."""
    from torchslim.evaluate import count_params
    from torchslim.text.artifact import load_text_artifact

    return count_params(load_text_artifact(folder, opened=opened).encoder)
