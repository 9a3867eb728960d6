"""An artifact back as a model: the recorded architecture is built (after the trust checks), resized to the stored
shapes, its quantized layers are replaced by skeletons of the recorded kind, and the stored tensors are loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim.artifact._codec import zstd_decompress
from torchslim.artifact._format import _decode_state, _open
from torchslim.artifact._trust import ArtifactError, read_file, require_code_consent


def load_artifact(path: str | Path, *, trust_code: bool = False, code_dir: str | Path | None = None,
                  verify_key: str | Path | None = None, model: nn.Module | None = None,
                  opened: tuple[dict[str, Any], bytes] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model an artifact describes, without unpickling anything.

    Args:
        path: the artifact folder.
        trust_code: allow building a model whose architecture is a user factory (``module:function``): that
            imports the module and calls the function. Without it such an artifact is refused; built-in
            architectures never import anything.
        code_dir: folder the factory module is imported from (first on ``sys.path`` during the import only,
            which is restored after); None: the current folder.
        verify_key: a public key (PEM): the artifact must carry a signature made with its private key
            (``torchslim sign``), checked before anything else is read.
        model: a freshly built module of the artifact's architecture to restore the artifact into, in place,
            instead of building one (nothing is imported); needed for a model that was given in memory
            (``torchslim.compress``), whose manifest names only its class.
        opened: ``(manifest, tensor data)`` the caller already read and verified from ``path`` (so a loader that
            looked at the manifest first reads the files once).
    Returns:
        ``(model, manifest)``; the model is in eval mode on the CPU. A quantized model computes with its
        dequantized weights and simulates its activation quantization; the int8 ONNX model, when stored, stays
        attached to it (see ``torchslim.load(path, runtime="onnxruntime")``).
    """
    from torchslim.domain import ModelSpec
    from torchslim._validation import parse
    from torchslim.models import build_model
    from torchslim.quantize._layout import (attach_int8_onnx, rebuild_quantized_layers_, rebuild_structure_,
                                            sync_attention_heads_, weight_shapes)

    folder = Path(path)
    if verify_key is not None:
        from torchslim.artifact._signing import verify_artifact

        verify_artifact(folder, verify_key)
    manifest, data = opened if opened is not None else _open(folder)[:2]
    architecture = manifest.get("architecture")
    if not isinstance(architecture, dict):
        raise ArtifactError(folder, "the manifest has no architecture to rebuild the model from")
    if model is None:
        if "module" in architecture:
            raise ArtifactError(folder, f"its model was given in memory ({str(architecture['module'])[:100]}): "
                                        f"pass a fresh instance, torchslim.load(path, model=...)")
        try:
            spec = parse(ModelSpec, {k: v for k, v in architecture.items() if k in ("name", "factory", "kwargs")})
        except ConfigError as exc:
            raise ArtifactError(folder, f"the recorded architecture is invalid: {exc.field}: {exc.message}"
                                ) from None
        require_code_consent(folder, architecture, trust_code)
    state = _decode_state(folder, manifest, data)
    if model is None:
        try:
            model = build_model(spec, code_dir if code_dir is not None else ".")
        except ConfigError as exc:
            raise ArtifactError(folder, f"cannot build the recorded architecture: {exc}") from None
    quantization = manifest.get("quantization", {})
    try:
        layers = quantization.get("layers", {})
        rebuild_structure_(model, manifest.get("structure", {}))
        _fit_shapes_(model, {**state, **weight_shapes(layers)})
        sync_attention_heads_(model)
        rebuild_quantized_layers_(model, layers)
        model.load_state_dict(state)
    except KeyError as exc:
        raise ArtifactError(folder, f"the manifest lacks the key {exc} needed to rebuild the model") from None
    except (ValueError, RuntimeError, AttributeError, TypeError, IndexError) as exc:
        raise ArtifactError(folder, f"the stored tensors do not fit the recorded model: "
                                    f"{' '.join(str(exc).split())[:200]}") from None
    int8_onnx = quantization.get("int8_onnx")
    if int8_onnx:
        if int8_onnx not in manifest["payloads"]:  # only a payload has a sha256 that was checked
            raise ArtifactError(folder, f"the int8 model {str(int8_onnx)[:80]!r} is not a recorded payload")
        try:
            onnx_model, rest = zstd_decompress(read_file(folder, int8_onnx))
            if rest:
                raise ValueError(f"{len(rest)} bytes after the zstd frame")
        except Exception as exc:  # noqa: BLE001  (zstd's own errors)
            raise ArtifactError(folder, f"{int8_onnx} is not a zstd-coded ONNX model ({exc})") from None
        attach_int8_onnx(model, onnx_model, quantization.get("int8_onnx_weights"))
    return model.eval(), manifest


def _fit_shapes_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give a freshly built model the (possibly pruned) shapes stored in ``state`` (keys it lacks are ignored)."""
    current = model.state_dict()
    if all(current[k].shape == v.shape for k, v in state.items() if k in current):
        return
    from torchslim.prune import resize_to_state_dict_

    resize_to_state_dict_(model, state)
