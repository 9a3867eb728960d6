"""ONNX from an artifact: its stored int8 model when it has one, else an fp32 export of the reloaded module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.artifact import write_bytes_atomic


def example_input(manifest: dict[str, Any], model: nn.Module) -> torch.Tensor:
    """A (2, *input_shape) zero batch, the shape from the manifest (or the model's ``input_shape``)."""
    from torchslim.artifact import ArtifactError

    shape = manifest.get("input_shape") or getattr(model, "input_shape", None)
    if shape is None:
        raise ArtifactError("", "the artifact records no input_shape, so it cannot be exported to ONNX")
    return torch.zeros(2, *shape)


def module_onnx(model: nn.Module, manifest: dict[str, Any]) -> tuple[bytes, bool]:
    """(ONNX bytes, whether they are the stored int8 model) for a model loaded by ``load_artifact``."""
    from torchslim.artifact import ArtifactError
    from torchslim.export.onnx_export import export_onnx
    from torchslim.quantize._layout import int8_onnx_of

    try:
        stored = int8_onnx_of(model)
    except ValueError as exc:  # its record of the shared weights does not rebuild the graph it sealed
        raise ArtifactError("", f"its int8 model cannot be rebuilt from the stored tensors: {exc}") from None
    if stored is not None:
        return stored, True
    example = example_input(manifest, model)
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception as exc:  # noqa: BLE001  (whatever the model raises: the recorded shape is what is wrong)
        detail = " ".join(str(exc).split())[:120]
        raise ArtifactError("", f"its recorded input_shape {list(example.shape[1:])} does not fit the model: "
                                f"{type(exc).__name__}: {detail}") from None
    return export_onnx(model, example), False


def artifact_onnx(path: str | Path, **trust: Any) -> tuple[bytes, bool]:
    """The ONNX model of an artifact: its int8 payload (static, dynamic, 8-bit qat), else an fp32 export.

    ``trust``: ``trust_code``, ``code_dir``, ``verify_key`` as for :func:`torchslim.artifact.load_artifact`.

    Returns:
        (serialized ONNX, True when it is the stored int8 model).
    """
    from torchslim._load import open_verified
    from torchslim.artifact import load_artifact
    from torchslim.text.artifact import is_text_manifest

    opened = open_verified(path, trust.pop("verify_key", None))
    if is_text_manifest(opened[0]):  # a sentence encoder: its stored graph (token ids in), else an export
        return _text_onnx(path, opened)
    model, manifest = load_artifact(path, **trust, opened=opened)
    return module_onnx(model, manifest)


def _text_onnx(path: str | Path, opened: tuple[dict[str, Any], bytes]) -> tuple[bytes, bool]:
    from torchslim.text.artifact import load_text_artifact
    from torchslim.text.onnx import export_onnx

    embedder = load_text_artifact(path, opened=opened)
    if embedder.onnx is not None:
        return embedder.onnx, embedder.int8
    return export_onnx(embedder.encoder), False


def export_artifact(path: str | Path, out: str | Path, **trust: Any) -> tuple[Path, bool]:
    """Write an artifact's ONNX model to ``out``. Returns (path written, whether it is the int8 model)."""
    data, int8 = artifact_onnx(path, **trust)
    return write_bytes_atomic(out, data), int8
