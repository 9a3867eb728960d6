"""The artifact's bytes: the manifest and the encoded tensors, sealed, saved and read back.

Atomic writes live in ``_atomic``, what opening an artifact may read or import in ``_trust``, what its manifest's
fields may hold in ``_manifest``, the model rebuilt from a manifest in ``_rebuild``.

Layout of an artifact folder::

    manifest.json      a plain header: {"format": "torchslim-artifact", "manifest": "model.safetensors", "version": 10}
    model.safetensors  one uint8 tensor ``artifact``: a sha256 (32 bytes) of the format and version (``_seal``)
                       and what follows, the manifest (canonical JSON, one zstd frame primed with a fixed
                       dictionary of manifest text), then the tensor data,
                       each tensor in the encoding chosen for it at save time (see ``_codec``): dense, bit-packed
                       codes, Deep Compression's sparse entries (relative index + value), entropy-coded with zstd
                       when that is smaller
    model.int8.onnx.zst (static, dynamic, 8-bit qat) the int8 model ONNX Runtime runs, zstd-coded, without the
                       tensors the state dict already holds (put back, and checked, when it is asked for)
    model.sig          (optional, ``torchslim sign``) a signature over the other files

The manifest records the architecture, every tensor's shape, dtype, encoding and stored bytes, a sha256 of every
payload (the tensor data, the int8 model), the versions of the libraries, and whatever the caller adds (recipe,
domain, metrics, input shape, labels, preprocessing). It carries no timings, timestamps or absolute paths, so the
same model gives the same bytes. The leading sha256 covers every stored bit of the manifest and the tensors, the
manifest's ``payloads`` the int8 model: an edited, truncated or bit-flipped artifact is refused on load. The seal
detects damage, not intent (anyone can reseal an edit): a signature does that.
``read_manifest`` and ``torchslim inspect`` show the manifest in plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.artifact._atomic import fresh_dir, fsync_dir, replace_dir, write_bytes_atomic, write_file
from torchslim.artifact._trust import SIGNATURE, ArtifactError, check_files, is_plain_name, read_file
from torchslim.artifact._manifest import check_manifest
from torchslim.artifact._codec import (LARGE, decode_tensor, dtype_name, encode_tensor, zstd_compress,
                                      zstd_decompress)

ARTIFACT_VERSION = 10
# Versions this code reads: 4 to 9 differ from 10 only in the manifest's zstd dictionary (5 added the fine-tune's
# ``ema`` key to the vocabulary, 6 structured pruning's ``reconstruct``, 7 the int8 graph's GRU/LSTM weights
# shared with the state dict, 8 the int8 methods' ``reduce_range``, 9 an int8 LSTM's shared codes ``rnn_codes``
# and magnitude pruning's ``scope: lamp``, 10 the domain's ``data.fold``), and their dictionaries are kept.
READABLE_VERSIONS = (4, 5, 6, 7, 8, 9, 10)
FORMAT = "torchslim-artifact"
MANIFEST = "manifest.json"
PAYLOAD = "model.safetensors"
INT8_ONNX = "model.int8.onnx.zst"
TENSORS = "tensors"  # the payload name of the tensor data inside PAYLOAD


def _header(version: int = ARTIFACT_VERSION) -> dict[str, Any]:
    return {"format": FORMAT, "manifest": PAYLOAD, "version": version}


_HEADER = _header()
_BLOB = "artifact"  # the one tensor of PAYLOAD


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _versions() -> dict[str, str]:
    import numpy
    import safetensors
    import zstandard

    import torchslim

    return {"torchslim": torchslim.__version__, "torch": torch.__version__.split("+")[0],
            "safetensors": safetensors.__version__, "zstandard": zstandard.__version__, "numpy": numpy.__version__}


# ---- the payload: compressed manifest + tensor data ------------------------------------------------------------

def _seal(version: int) -> bytes:
    """What the payload's sha256 covers before the stored bytes: from format 5 on, the format and its version, so a
    header whose version was changed (one bit turns 5 into 4) is refused instead of read with another
    dictionary; format 4 hashed the stored bytes alone."""
    return b"" if version == 4 else f"{FORMAT} {version}\n".encode()


def _manifest_dictionary(version: int = ARTIFACT_VERSION):
    import zstandard

    if version == 4:
        from torchslim.artifact._dictionary_v4 import MANIFEST_DICTIONARY
    elif version == 5:
        from torchslim.artifact._dictionary_v5 import MANIFEST_DICTIONARY
    elif version == 6:
        from torchslim.artifact._dictionary_v6 import MANIFEST_DICTIONARY
    elif version == 7:
        from torchslim.artifact._dictionary_v7 import MANIFEST_DICTIONARY
    elif version == 8:
        from torchslim.artifact._dictionary_v8 import MANIFEST_DICTIONARY
    elif version == 9:
        from torchslim.artifact._dictionary_v9 import MANIFEST_DICTIONARY
    else:
        from torchslim.artifact._dictionary import MANIFEST_DICTIONARY

    return zstandard.ZstdCompressionDict(MANIFEST_DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _payload_bytes(manifest: dict[str, Any], data: bytes) -> bytes:
    """model.safetensors: sha256(frame + data) (32 bytes), the manifest's zstd frame, the tensor data."""
    import numpy as np
    from safetensors.numpy import save

    body = {k: v for k, v in manifest.items() if k not in ("format", "version")}  # those two: the header
    version = _HEADER["version"]
    sealed = zstd_compress(_canonical(body), _manifest_dictionary(version)) + data
    blob = hashlib.sha256(_seal(version) + sealed).digest() + sealed
    return save({_BLOB: np.frombuffer(blob, np.uint8)})


def _read_payload(folder: Path, version: int = ARTIFACT_VERSION) -> tuple[dict[str, Any], bytes, int]:
    """(manifest body, tensor data, stored bytes of the manifest) of ``folder``'s model.safetensors, written by
    format ``version``."""
    from safetensors.numpy import load

    raw = read_file(folder, PAYLOAD)
    try:
        blob = load(raw)[_BLOB].tobytes()
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own kinds)
        raise ArtifactError(folder, f"{PAYLOAD} is truncated or corrupted ({type(exc).__name__})") from None
    digest, sealed = blob[:32], blob[32:]
    if hashlib.sha256(_seal(version) + sealed).digest() != digest:  # every stored bit: no damage goes unnoticed
        raise ArtifactError(folder, f"{PAYLOAD} was modified after it was written (sha256 mismatch)")
    try:
        text, data = zstd_decompress(sealed, _manifest_dictionary(version))
        body = json.loads(text)
    except Exception as exc:  # noqa: BLE001  (zstd and json each raise their own kind)
        raise ArtifactError(folder, f"{PAYLOAD} holds no readable manifest ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise ArtifactError(folder, f"{PAYLOAD} holds no manifest")
    return body, data, len(blob) - len(data)


def _packed_codes(key: str, layers: dict[str, dict[str, Any]]) -> tuple[int, int] | None:
    """(bits, codes) of a quantized layer's bit-packed codes stored under ``key`` (a recurrent layer's matrix's
    too), so that the codec may store the codes another way; None for any other tensor."""
    from torchslim.quantize._layout import split_source_key

    split = split_source_key(key)
    if split is None or split[2] != "packed" or split[0] not in layers:
        return None
    spec = layers[split[0]]
    shape = spec.get("shape") if split[1] is None else (spec.get("weights") or {}).get(split[1])
    return None if shape is None else (int(spec["bits"]), int(torch.Size(shape).numel()))


def _encode_state(state: dict[str, torch.Tensor], layers: dict[str, dict[str, Any]], compress: bool = True,
                  entropy: bool = True) -> tuple[dict[str, dict[str, Any]], bytes, bool]:
    """(tensor table, tensor data, whether the data is one zstd frame) in the order of the sorted keys."""
    table, stored, inflated = {}, [], []
    fast = sum(t.numel() * t.element_size() for t in state.values()) >= 4 * LARGE
    for key in sorted(state):
        t = state[key]
        entry, data, before = encode_tensor(t, _packed_codes(key, layers), compress=compress, entropy=entropy,
                                            fast=fast)
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
        for alias, key in manifest.get("tied", {}).items():  # checked: each names a stored tensor
            state[alias] = state[key]
    except KeyError as exc:
        raise ArtifactError(folder, f"{MANIFEST} lacks the key {exc} needed to read the tensors") from None
    except Exception as exc:  # noqa: BLE001  (numpy, zstd: whatever the damaged bytes trip over)
        raise ArtifactError(folder, f"the tensor data does not match the manifest: {' '.join(str(exc).split())}"
                            ) from None
    return state


# ---- save ------------------------------------------------------------------------------------------------------

def _stored_once(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(``state`` less the keys whose tensor is an earlier key's, {such key: the key it is stored under}): a tied
    weight (an output head reusing the embedding table) is one tensor under two names, stored once."""
    first: dict[tuple, str] = {}
    kept, tied = {}, {}
    for key in sorted(state):
        t = state[key]
        same = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and same in first:
            tied[key] = first[same]
            continue
        first.setdefault(same, key)
        kept[key] = t
    return kept, tied


def _artifact_files(model: nn.Module, architecture: dict[str, Any], extra: dict[str, Any] | None, compress: bool,
                    entropy: bool, files: dict[str, bytes] | None = None,
                    state: dict[str, torch.Tensor] | None = None) -> dict[str, bytes]:
    """{file name: bytes} of ``model``'s artifact folder (see :func:`save_artifact` for the arguments)."""
    from torchslim.quantize._layout import (compact_onnx, describe_quantized_layers, describe_structure,
                                            int8_onnx_of, strip_int8_weights)

    state, tied = _stored_once(model.state_dict() if state is None else state)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    layers = describe_quantized_layers(model)
    onnx_model = int8_onnx_of(model) if layers else None
    table, data, whole = _encode_state(state, layers, compress, entropy)
    payloads = {TENSORS: _sha256(data)}
    manifest: dict[str, Any] = {"architecture": architecture, "tensors": table, "payloads": payloads,
                                "versions": _versions(), **(extra or {})}
    if whole:
        manifest["entropy"] = "payload"
    if tied:
        manifest["tied"] = tied
    structure = describe_structure(model)
    if structure:
        manifest["structure"] = structure
    if layers:
        manifest["quantization"] = {"layers": layers}
    stored_files = {MANIFEST: _canonical(_HEADER), PAYLOAD: b""}
    if onnx_model is not None:
        onnx_model = compact_onnx(onnx_model)
        split = strip_int8_weights(onnx_model, model) if compress else None
        if split is not None:  # weights, biases, norms: the state dict's tensors, stored once, put back at load
            onnx_model, manifest["quantization"]["int8_onnx_weights"] = split
        stored = zstd_compress(onnx_model)
        payloads[INT8_ONNX] = _sha256(stored)
        manifest["quantization"]["int8_onnx"] = INT8_ONNX
        stored_files[INT8_ONNX] = stored
    for name, content in sorted((files or {}).items()):
        if not is_plain_name(name) or name in (MANIFEST, PAYLOAD, SIGNATURE, INT8_ONNX, TENSORS):
            raise ValueError(f"payload name {name!r} is not a free plain file name")
        payloads[name] = _sha256(content)
        stored_files[name] = content
    stored_files[PAYLOAD] = _payload_bytes(manifest, data)
    return stored_files


def save_artifact(model: nn.Module, path: str | Path, *, architecture: dict[str, Any],
                  extra: dict[str, Any] | None = None, compress: bool = True, entropy: bool = True,
                  files: dict[str, bytes] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
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
        files: further payload files {plain name: bytes} (a tokenizer, an ONNX model), sealed by their sha256 in
            the manifest like the tensors; ``_trust.read_file`` reads them back.
        state: the tensors to store instead of ``model.state_dict()`` (an artifact whose weights live in the
            int8 graph's form, see :mod:`torchslim.text.artifact`).
    Returns:
        the artifact path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    files = _artifact_files(model, architecture, extra, compress, entropy, files, state)
    tmp = fresh_dir(target)
    try:
        for name, data in files.items():
            write_file(tmp / name, data)
        fsync_dir(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def artifact_bytes(model: nn.Module, *, architecture: dict[str, Any], extra: dict[str, Any] | None = None,
                   compress: bool = True, entropy: bool = True, files: dict[str, bytes] | None = None,
                   state: dict[str, torch.Tensor] | None = None) -> int:
    """The bytes :func:`save_artifact` would write for ``model`` with these arguments, without writing them."""
    return sum(len(data) for data in _artifact_files(model, architecture, extra, compress, entropy, files,
                                                     state).values())


# ---- read ------------------------------------------------------------------------------------------------------

def _open(path: str | Path) -> tuple[dict[str, Any], bytes, int]:
    """(verified manifest, tensor data, stored bytes of the manifest); any damage is an ArtifactError.

    Reads only the two files every artifact has and the payloads its (sealed) manifest names, each by a plain
    name inside the folder; a folder holding any other file (a signature aside) is refused.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(folder, "not a torchslim artifact (no such folder)")
    if not (folder / MANIFEST).exists() and (folder / "artifact" / MANIFEST).exists():
        raise ArtifactError(folder, f"is a run folder; its artifact is {folder / 'artifact'}")
    if not (folder / MANIFEST).exists() and (folder / "best" / MANIFEST).exists():
        raise ArtifactError(folder, f"is a search folder; its best artifact is {folder / 'best'}")
    if not (folder / MANIFEST).exists():
        raise ArtifactError(folder, f"not a torchslim artifact (no {MANIFEST})")
    try:
        header = json.loads(read_file(folder, MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ArtifactError(folder, f"{MANIFEST} is not valid JSON (truncated or corrupted)") from None
    except ValueError:  # valid JSON Python will not read: an integer of more than 4,300 digits
        raise ArtifactError(folder, f"{MANIFEST} is not a torchslim manifest (it holds a number too long to read)"
                            ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArtifactError(folder, f"{MANIFEST} is not a torchslim manifest")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_VERSIONS:
        raise ArtifactError(folder, f"artifact format version {str(version)[:20]} is not supported "
                                    f"(this torchslim reads {', '.join(map(str, READABLE_VERSIONS))})")
    if header != _header(version):
        raise ArtifactError(folder, f"{MANIFEST} was modified after it was written")
    body, data, manifest_bytes = _read_payload(folder, version)
    if "format" in body or "version" in body:  # the header's alone: a sealed copy would contradict it
        raise ArtifactError(folder, f"{PAYLOAD} repeats the header's format or version (refused)")
    manifest = {"format": FORMAT, "version": version, **body}
    payloads = manifest.get("payloads")
    if not isinstance(payloads, dict) or TENSORS not in payloads:
        raise ArtifactError(folder, f"the manifest lists no payloads (it must name {TENSORS!r} and its sha256)")
    for name in payloads:
        if name != TENSORS and (not is_plain_name(name) or name in (MANIFEST, PAYLOAD, SIGNATURE)):
            raise ArtifactError(folder, f"the manifest names the payload {str(name)[:80]!r}, which is not a plain "
                                        f"file name inside the artifact folder (refused)")
    check_files(folder, stored_files(manifest))
    for name, digest in payloads.items():
        content = data if name == TENSORS else read_file(folder, name)
        if _sha256(content) != digest:
            raise ArtifactError(folder, f"payload {name} is corrupted (sha256 mismatch)")
    check_manifest(folder, manifest)  # every reader gets well-formed fields or one line naming the bad one
    return manifest, data, manifest_bytes


def stored_files(manifest: dict[str, Any]) -> list[str]:
    """The files of an artifact folder: the header, the payload, and every further payload the manifest names."""
    return [MANIFEST, PAYLOAD, *sorted(n for n in manifest.get("payloads", {}) if n != TENSORS)]


def artifact_digest(path: str | Path) -> str:
    """sha256 over the verified artifact's files (names and contents; a signature is not part of it).

    A run's ``metrics.json`` records it, so a metrics file can be matched to the artifact it describes.
    """
    folder = Path(path)
    manifest, _, _ = _open(folder)
    digest = hashlib.sha256()
    for name in stored_files(manifest):
        digest.update(f"{name}\0{_sha256(read_file(folder, name))}\n".encode())
    return digest.hexdigest()


def artifact_size(path: str | Path) -> int:
    """Bytes of an artifact's files (a signature beside them is not part of the model)."""
    folder = Path(path)
    return sum((folder / name).stat().st_size for name in stored_files(_open(folder)[0]))


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
