"""One module writes and reads artifacts.

Layout of an artifact folder::

    manifest.json      architecture, tensor table, payload hashes, recipe, domain, metric values, versions, and for
                       a quantized model the description of each quantized layer (kind, shape, bits, granularity)
    model.safetensors  the tensors: a quantized layer stores its packed integer codes + scales/zero points, or its
                       codebook + packed indices, never a float copy of the weight
    model.int8.onnx    (static, dynamic, 8-bit qat) the int8 model ONNX Runtime runs

The manifest carries no timings, timestamps or absolute paths, so the same recipe and seed give the same bytes.
Its own ``sha256`` covers every other manifest key, and ``payloads`` covers every other file: an edited, truncated
or bit-flipped artifact is refused on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._errors import ConfigError

ARTIFACT_VERSION = 1
MANIFEST = "manifest.json"
PAYLOAD = "model.safetensors"
INT8_ONNX = "model.int8.onnx"


class ArtifactError(ConfigError):
    """An artifact that cannot be trusted or read."""

    def __init__(self, path: str | Path, message: str):
        super().__init__("", message, str(path))


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sealed(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its ``sha256`` recomputed over every other key."""
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    body["sha256"] = _sha256(_canonical(body))
    return body


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file: a reader sees the old file or the new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    body = _sealed(manifest)
    write_bytes_atomic(folder / MANIFEST, _canonical(body))
    return body


def _versions() -> dict[str, str]:
    import safetensors

    import torchslim

    return {"torchslim": torchslim.__version__, "torch": torch.__version__.split("+")[0],
            "safetensors": safetensors.__version__}


def save_artifact(model: nn.Module, path: str | Path, *, architecture: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as an artifact folder at ``path``, atomically (the old one or the new one, never half).

    Args:
        model: the model to save; its state dict is stored as it is (pruned shapes included).
        architecture: how to rebuild the module before loading tensors (``{"name": ..., "kwargs": ...}`` or
            ``{"factory": ..., "kwargs": ...}``).
        extra: further manifest keys (recipe, domain, metrics, input shape, labels, preprocessing).
    Returns:
        the artifact path.
    """
    from safetensors.torch import save_file

    from torchslim.quantize._layout import describe_quantized_layers, int8_onnx_of

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    layers = describe_quantized_layers(model)
    onnx_model = int8_onnx_of(model) if layers else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(state, str(tmp / PAYLOAD))
        payloads = {PAYLOAD: _sha256((tmp / PAYLOAD).read_bytes())}
        quantization: dict[str, Any] = {"layers": layers}
        if onnx_model is not None:
            (tmp / INT8_ONNX).write_bytes(onnx_model)
            payloads[INT8_ONNX] = _sha256(onnx_model)
            quantization["int8_onnx"] = INT8_ONNX
        manifest: dict[str, Any] = {
            "format": "torchslim-artifact", "version": ARTIFACT_VERSION, "architecture": architecture,
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                            "encoding": _encoding(k, layers)} for k, v in state.items()},
            "payloads": payloads, "versions": _versions(), **(extra or {}),
        }
        if layers:
            manifest["quantization"] = quantization
        _write_manifest(tmp, manifest)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _encoding(key: str, layers: dict[str, dict[str, Any]]) -> str:
    """How a stored tensor is to be read: dense, or bit-packed codes (``packed4``: 4 bits per code)."""
    owner, _, leaf = key.rpartition(".weight_source.")
    if owner in layers and leaf == "packed":
        return f"packed{layers[owner]['bits']}"
    return "dense"


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``. A crash leaves the old artifact or the new one in place, never a mix."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The verified manifest of an artifact; any damage is an :class:`ArtifactError`."""
    folder = Path(path)
    if not (folder / MANIFEST).is_file():
        raise ArtifactError(folder, f"not a torchslim artifact (no {MANIFEST})")
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(folder, f"{MANIFEST} is not valid JSON (truncated or corrupted)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "torchslim-artifact":
        raise ArtifactError(folder, f"{MANIFEST} is not a torchslim manifest")
    if manifest.get("sha256") != _sealed(manifest)["sha256"]:
        raise ArtifactError(folder, f"{MANIFEST} was modified after it was written (checksum mismatch)")
    if manifest.get("version") != ARTIFACT_VERSION:
        raise ArtifactError(folder, f"artifact format version {manifest.get('version')} is not supported "
                                    f"(this torchslim reads {ARTIFACT_VERSION})")
    payloads = manifest.get("payloads")
    if not isinstance(payloads, dict) or PAYLOAD not in payloads:
        raise ArtifactError(folder, f"{MANIFEST} lists no payloads (it must name {PAYLOAD} and its sha256)")
    for name, digest in payloads.items():
        payload = folder / name
        if not payload.is_file():
            raise ArtifactError(folder, f"payload {name} is missing")
        if _sha256(payload.read_bytes()) != digest:
            raise ArtifactError(folder, f"payload {name} is corrupted (sha256 mismatch)")
    return manifest


def update_manifest(path: str | Path, **keys: Any) -> dict[str, Any]:
    """Add or replace manifest keys (e.g. the metric measured on the reloaded artifact), atomically."""
    folder = Path(path)
    manifest = read_manifest(folder)
    manifest.update(keys)
    return _write_manifest(folder, manifest)


def load_artifact(path: str | Path, *, base_dir: str | Path = ".") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model an artifact describes, without unpickling anything.

    The architecture is built, resized to the stored (possibly pruned) shapes, its quantized layers are replaced
    by skeletons of the recorded kind, and the stored tensors are loaded (strictly: every key must match).

    Returns:
        ``(model, manifest)``; the model is in eval mode on the CPU. A quantized model computes with its
        dequantized weights and simulates its activation quantization; the int8 ONNX model, when stored, stays
        attached to it (see ``torchslim.load(path, runtime="onnxruntime")``).
    """
    from safetensors.torch import load_file

    from torchslim.domain import ModelSpec
    from torchslim.models import build_model
    from torchslim.quantize._layout import attach_int8_onnx, rebuild_quantized_layers_, weight_shapes

    folder = Path(path)
    manifest = read_manifest(folder)
    architecture = manifest.get("architecture")
    if not isinstance(architecture, dict):
        raise ArtifactError(folder, f"{MANIFEST} has no architecture to rebuild the model from")
    spec = ModelSpec(**{k: v for k, v in architecture.items() if k in ("name", "factory", "kwargs")})
    model = build_model(spec, base_dir)
    state = load_file(str(folder / PAYLOAD))
    quantization = manifest.get("quantization", {})
    try:
        layers = quantization.get("layers", {})
        _fit_shapes_(model, {**state, **weight_shapes(layers)})
        rebuild_quantized_layers_(model, layers)
        model.load_state_dict(state)
    except KeyError as exc:
        raise ArtifactError(folder, f"{MANIFEST} lacks the key {exc} needed to rebuild the model") from None
    except (ValueError, RuntimeError, AttributeError, TypeError) as exc:
        raise ArtifactError(folder, f"the stored tensors do not fit the recorded model: "
                                    f"{' '.join(str(exc).split())}") from None
    if quantization.get("int8_onnx"):
        attach_int8_onnx(model, (folder / quantization["int8_onnx"]).read_bytes())
    return model.eval(), manifest


def _fit_shapes_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give a freshly built model the (possibly pruned) shapes stored in ``state`` (keys it lacks are ignored)."""
    current = model.state_dict()
    if all(current[k].shape == v.shape for k, v in state.items() if k in current):
        return
    from torchslim.prune import resize_to_state_dict_

    resize_to_state_dict_(model, state)
