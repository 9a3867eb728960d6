"""One module writes and reads artifacts.

Layout of an artifact folder::

    manifest.json      a plain header: {"format": "torchslim-artifact", "manifest": "model.safetensors", "version": 3}
    model.safetensors  one uint8 tensor ``artifact``: a sha256 (32 bytes) of what follows, the manifest (canonical
                       JSON, one zstd frame primed with a fixed dictionary of manifest text), then the tensor data,
                       each tensor in the encoding chosen for it at save time (see ``_codec``): dense, bit-packed
                       codes, Deep Compression's sparse entries (relative index + value), entropy-coded with zstd
                       when that is smaller
    model.int8.onnx    (static, dynamic, 8-bit qat) the int8 model ONNX Runtime runs

The manifest records the architecture, every tensor's shape, dtype, encoding and stored bytes, a sha256 of every
payload (the tensor data, the int8 model), the versions of the libraries, and whatever the caller adds (recipe,
domain, metrics, input shape, labels, preprocessing). It carries no timings, timestamps or absolute paths, so the
same model gives the same bytes. The leading sha256 covers every stored bit of the manifest and the tensors, the
manifest's ``payloads`` the int8 model: an edited, truncated or bit-flipped artifact is refused on load.
``read_manifest`` and ``torchslim inspect`` show the manifest in plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim.artifact._codec import (LARGE, decode_tensor, dtype_name, encode_tensor, zstd_compress,
                                      zstd_decompress)

ARTIFACT_VERSION = 3
FORMAT = "torchslim-artifact"
MANIFEST = "manifest.json"
PAYLOAD = "model.safetensors"
INT8_ONNX = "model.int8.onnx"
TENSORS = "tensors"  # the payload name of the tensor data inside PAYLOAD
_HEADER = {"format": FORMAT, "manifest": PAYLOAD, "version": ARTIFACT_VERSION}
_BLOB = "artifact"  # the one tensor of PAYLOAD


class ArtifactError(ConfigError):
    """An artifact that cannot be trusted or read."""

    def __init__(self, path: str | Path, message: str):
        super().__init__("", message, str(path))


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file: a reader sees the old file or the new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _versions() -> dict[str, str]:
    import numpy
    import safetensors
    import zstandard

    import torchslim

    return {"torchslim": torchslim.__version__, "torch": torch.__version__.split("+")[0],
            "safetensors": safetensors.__version__, "zstandard": zstandard.__version__, "numpy": numpy.__version__}


# ---- the payload: compressed manifest + tensor data ------------------------------------------------------------

def _manifest_dictionary():
    import zstandard

    from torchslim.artifact._dictionary import MANIFEST_DICTIONARY

    return zstandard.ZstdCompressionDict(MANIFEST_DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _payload_bytes(manifest: dict[str, Any], data: bytes) -> bytes:
    """model.safetensors: sha256(frame + data) (32 bytes), the manifest's zstd frame, the tensor data."""
    import numpy as np
    from safetensors.numpy import save

    body = {k: v for k, v in manifest.items() if k not in ("format", "version")}  # those two: the header
    sealed = zstd_compress(_canonical(body), _manifest_dictionary()) + data
    blob = hashlib.sha256(sealed).digest() + sealed
    return save({_BLOB: np.frombuffer(blob, np.uint8)})


def _read_payload(folder: Path) -> tuple[dict[str, Any], bytes, int]:
    """(manifest body, tensor data, stored bytes of the manifest) of ``folder``'s model.safetensors."""
    from safetensors.numpy import load

    try:
        blob = load((folder / PAYLOAD).read_bytes())[_BLOB].tobytes()
    except FileNotFoundError:
        raise ArtifactError(folder, f"{PAYLOAD} is missing") from None
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own kinds)
        raise ArtifactError(folder, f"{PAYLOAD} is truncated or corrupted ({type(exc).__name__})") from None
    digest, sealed = blob[:32], blob[32:]
    if hashlib.sha256(sealed).digest() != digest:  # covers every stored bit, so no damage goes unnoticed
        raise ArtifactError(folder, f"{PAYLOAD} was modified after it was written (sha256 mismatch)")
    try:
        text, data = zstd_decompress(sealed, _manifest_dictionary())
        body = json.loads(text)
    except Exception as exc:  # noqa: BLE001  (zstd and json each raise their own kind)
        raise ArtifactError(folder, f"{PAYLOAD} holds no readable manifest ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise ArtifactError(folder, f"{PAYLOAD} holds no manifest")
    return body, data, len(blob) - len(data)


def _encode_state(state: dict[str, torch.Tensor], layers: dict[str, dict[str, Any]], compress: bool = True,
                  entropy: bool = True) -> tuple[dict[str, dict[str, Any]], bytes, bool]:
    """(tensor table, tensor data, whether the data is one zstd frame) in the order of the sorted keys."""
    table, stored, inflated = {}, [], []
    for key in sorted(state):
        t = state[key]
        owner, _, leaf = key.rpartition(".weight_source.")
        packed = None
        if owner in layers and leaf == "packed":
            packed = (int(layers[owner]["bits"]), int(torch.Size(layers[owner]["shape"]).numel()))
        entry, data, before = encode_tensor(t, packed, compress=compress, entropy=entropy)
        table[key] = {"shape": list(t.shape), "dtype": dtype_name(t.dtype), **entry, "bytes": len(data)}
        stored.append(data)
        inflated.append(before)
    separate, joined = b"".join(stored), b"".join(inflated)
    # large models: the per-tensor frames are all that is worth the time
    if not (compress and entropy) or len(joined) >= LARGE:
        return table, separate, False
    whole = zstd_compress(joined)
    if len(whole) < len(separate):  # one frame for all: fewer frame headers and code tables
        for key, before in zip(sorted(state), inflated):
            table[key]["bytes"] = len(before)
        return table, whole, True
    return table, separate, False


def _decode_state(folder: Path, manifest: dict[str, Any], data: bytes) -> dict[str, torch.Tensor]:
    table = manifest.get("tensors")
    if not isinstance(table, dict):
        raise ArtifactError(folder, f"{MANIFEST} has no tensor table")
    inflated = manifest.get("entropy") == "payload"
    try:
        if inflated:
            data, _ = zstd_decompress(data)
        state, offset = {}, 0
        for key in sorted(table):
            entry = table[key]
            size = int(entry["bytes"])
            state[key] = decode_tensor(entry, data[offset:offset + size], inflated=inflated)
            offset += size
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes of tensor data are not described")
    except KeyError as exc:
        raise ArtifactError(folder, f"{MANIFEST} lacks the key {exc} needed to read the tensors") from None
    except Exception as exc:  # noqa: BLE001  (numpy, zstd: whatever the damaged bytes trip over)
        raise ArtifactError(folder, f"the tensor data does not match the manifest: {' '.join(str(exc).split())}"
                            ) from None
    return state


# ---- save ------------------------------------------------------------------------------------------------------

def _artifact_files(model: nn.Module, architecture: dict[str, Any], extra: dict[str, Any] | None, compress: bool,
                    entropy: bool) -> dict[str, bytes]:
    """{file name: bytes} of ``model``'s artifact folder (see :func:`save_artifact` for the arguments)."""
    from torchslim.quantize._layout import describe_quantized_layers, int8_onnx_of, strip_int8_weights

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    layers = describe_quantized_layers(model)
    onnx_model = int8_onnx_of(model) if layers else None
    table, data, whole = _encode_state(state, layers, compress, entropy)
    payloads = {TENSORS: _sha256(data)}
    manifest: dict[str, Any] = {"architecture": architecture, "tensors": table, "payloads": payloads,
                                "versions": _versions(), **(extra or {})}
    if whole:
        manifest["entropy"] = "payload"
    if layers:
        manifest["quantization"] = {"layers": layers}
    files = {MANIFEST: _canonical(_HEADER), PAYLOAD: b""}
    if onnx_model is not None:
        split = strip_int8_weights(onnx_model, model) if compress else None
        if split is not None:  # the int8 weights are the state dict's codes: stored once, put back at load
            onnx_model, manifest["quantization"]["int8_onnx_weights"] = split
        payloads[INT8_ONNX] = _sha256(onnx_model)
        manifest["quantization"]["int8_onnx"] = INT8_ONNX
        files[INT8_ONNX] = onnx_model
    files[PAYLOAD] = _payload_bytes(manifest, data)
    return files


def save_artifact(model: nn.Module, path: str | Path, *, architecture: dict[str, Any],
                  extra: dict[str, Any] | None = None, compress: bool = True, entropy: bool = True) -> Path:
    """Write ``model`` as an artifact folder at ``path``, atomically (the old one or the new one, never half).

    Every tensor is stored in the smallest of its lossless encodings; the reloaded model computes exactly what
    ``model`` computes.

    Args:
        model: the model to save; its state dict is stored as it is (pruned shapes included).
        architecture: how to rebuild the module before loading tensors (``{"name": ..., "kwargs": ...}`` or
            ``{"factory": ..., "kwargs": ...}``).
        extra: further manifest keys (recipe, domain, metrics, input shape, labels, preprocessing).
        compress: False stores every tensor as it is (no sparse or entropy coding): the uncompressed fp32 file a
            baseline is measured as.
        entropy: False keeps the sparse and packed encodings but leaves the tensor data without zstd entropy
            coding (the report's "before entropy coding" size).
    Returns:
        the artifact path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    files = _artifact_files(model, architecture, extra, compress, entropy)
    tmp = _fresh_dir(target)
    try:
        for name, data in files.items():
            _write(tmp / name, data)
        _fsync(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def artifact_bytes(model: nn.Module, *, architecture: dict[str, Any], extra: dict[str, Any] | None = None,
                   compress: bool = True, entropy: bool = True) -> int:
    """The bytes :func:`save_artifact` would write for ``model`` with these arguments, without writing them."""
    return sum(len(data) for data in _artifact_files(model, architecture, extra, compress, entropy).values())


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:  # mode 0666 less the umask, like any file the user writes
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fresh_dir(target: Path) -> Path:
    """A new empty sibling folder of ``target`` (mode 0777 less the umask), after clearing the leftovers of
    saves that were killed midway."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        pid = stale.name[len(target.name) + 2:].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    for n in range(1000):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{n}.tmp")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary folder beside {target}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``. A crash leaves the old artifact, the new one, or (between the two renames)
    none, never a mix."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
    _fsync(target.parent)


# ---- read ------------------------------------------------------------------------------------------------------

def _open(path: str | Path) -> tuple[dict[str, Any], bytes, int]:
    """(verified manifest, tensor data, stored bytes of the manifest); any damage is an ArtifactError."""
    folder = Path(path)
    if not (folder / MANIFEST).is_file():
        raise ArtifactError(folder, f"not a torchslim artifact (no {MANIFEST})")
    try:
        header = json.loads((folder / MANIFEST).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(folder, f"{MANIFEST} is not valid JSON (truncated or corrupted)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArtifactError(folder, f"{MANIFEST} is not a torchslim manifest")
    if header.get("version") != ARTIFACT_VERSION:
        raise ArtifactError(folder, f"artifact format version {header.get('version')} is not supported "
                                    f"(this torchslim reads {ARTIFACT_VERSION})")
    if header != _HEADER:
        raise ArtifactError(folder, f"{MANIFEST} was modified after it was written")
    body, data, manifest_bytes = _read_payload(folder)
    manifest = {"format": FORMAT, "version": ARTIFACT_VERSION, **body}
    payloads = manifest.get("payloads")
    if not isinstance(payloads, dict) or TENSORS not in payloads:
        raise ArtifactError(folder, f"the manifest lists no payloads (it must name {TENSORS!r} and its sha256)")
    for name, digest in payloads.items():
        if name == TENSORS:
            content = data
        elif "/" in name or name.startswith(".") or not (folder / name).is_file():
            raise ArtifactError(folder, f"payload {name} is missing")
        else:
            content = (folder / name).read_bytes()
        if _sha256(content) != digest:
            raise ArtifactError(folder, f"payload {name} is corrupted (sha256 mismatch)")
    return manifest, data, manifest_bytes


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The verified manifest of an artifact, as plain JSON-ready data; any damage is an :class:`ArtifactError`."""
    return _open(path)[0]


def update_manifest(path: str | Path, **keys: Any) -> dict[str, Any]:
    """Add or replace manifest keys (e.g. the metric measured on the reloaded artifact), atomically."""
    folder = Path(path)
    manifest, data, _ = _open(folder)
    manifest.update(keys)
    write_bytes_atomic(folder / PAYLOAD, _payload_bytes(manifest, data))
    return manifest


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict an artifact stores, decoded (packed codes stay packed, as the model holds them)."""
    manifest, data, _ = _open(path)
    return _decode_state(Path(path), manifest, data)


def load_artifact(path: str | Path, *, base_dir: str | Path = ".") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model an artifact describes, without unpickling anything.

    The architecture is built, resized to the stored (possibly pruned) shapes, its quantized layers are replaced
    by skeletons of the recorded kind, and the stored tensors are loaded (strictly: every key must match).

    Returns:
        ``(model, manifest)``; the model is in eval mode on the CPU. A quantized model computes with its
        dequantized weights and simulates its activation quantization; the int8 ONNX model, when stored, stays
        attached to it (see ``torchslim.load(path, runtime="onnxruntime")``).
    """
    from torchslim.domain import ModelSpec
    from torchslim.models import build_model
    from torchslim.quantize._layout import attach_int8_onnx, rebuild_quantized_layers_, weight_shapes

    folder = Path(path)
    manifest, data, _ = _open(folder)
    architecture = manifest.get("architecture")
    if not isinstance(architecture, dict):
        raise ArtifactError(folder, "the manifest has no architecture to rebuild the model from")
    state = _decode_state(folder, manifest, data)
    spec = ModelSpec(**{k: v for k, v in architecture.items() if k in ("name", "factory", "kwargs")})
    model = build_model(spec, base_dir)
    quantization = manifest.get("quantization", {})
    try:
        layers = quantization.get("layers", {})
        _fit_shapes_(model, {**state, **weight_shapes(layers)})
        rebuild_quantized_layers_(model, layers)
        model.load_state_dict(state)
    except KeyError as exc:
        raise ArtifactError(folder, f"the manifest lacks the key {exc} needed to rebuild the model") from None
    except (ValueError, RuntimeError, AttributeError, TypeError) as exc:
        raise ArtifactError(folder, f"the stored tensors do not fit the recorded model: "
                                    f"{' '.join(str(exc).split())}") from None
    if quantization.get("int8_onnx"):
        attach_int8_onnx(model, (folder / quantization["int8_onnx"]).read_bytes(),
                         quantization.get("int8_onnx_weights"))
    return model.eval(), manifest


def _fit_shapes_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give a freshly built model the (possibly pruned) shapes stored in ``state`` (keys it lacks are ignored)."""
    current = model.state_dict()
    if all(current[k].shape == v.shape for k, v in state.items() if k in current):
        return
    from torchslim.prune import resize_to_state_dict_

    resize_to_state_dict_(model, state)
