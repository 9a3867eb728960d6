"""``torchslim.load``: an artifact back as something that predicts, in torch or in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

RUNTIMES = ("torch", "onnxruntime")


def load(path: str | Path, *, runtime: Literal["torch", "onnxruntime"] = "torch", trust_code: bool = False,
         code_dir: str | Path | None = None, verify_key: str | Path | None = None, model: Any = None,
         intra_op_threads: int | None = None) -> Any:
    """Load a saved artifact for inference.

    Args:
        path: the artifact folder (``DIR/artifact`` of a run).
        runtime: ``torch`` → the ``nn.Module``, plain PyTorch where the arithmetic allows: weight-only and k-means
            layers decoded once into ordinary Linear/Conv layers (int8 layers keep simulating their activation
            quantization, which ONNX Runtime executes); ``onnxruntime`` → a callable over an ONNX Runtime session:
            the stored int8 model when the artifact has one (static, dynamic, 8-bit qat), else an fp32 export.
        trust_code: allow an artifact whose architecture is a user factory (``module:function``) to import and
            call it; without it such an artifact is refused (built-in architectures never import code).
        code_dir: folder the factory's module is imported from (``sys.path`` is restored afterwards).
        verify_key: public key (PEM) whose signature the artifact must carry (``torchslim sign``).
        model: a fresh module of the artifact's architecture to restore it into (needed for a model that was
            given to ``torchslim.compress`` in memory; nothing is imported).
        intra_op_threads: ONNX Runtime threads per operator (None: ORT's default).
    Returns:
        ``nn.Module`` in eval mode, or a :class:`torchslim.export.OrtSession` (tensors in, tensors out) whose
        ``int8`` attribute says whether it runs the stored int8 model; both carry ``labels`` (the class names,
        in output order) and ``preprocessing`` (how the inputs were made) from the artifact. A sentence-embedding
        artifact loads as a :class:`torchslim.text.SentenceEmbedder`: ``encode(list_of_sentences) -> (N, hidden)``
        in either runtime, with the artifact's own tokenizer, pooling and normalisation (an int8 one runs its
        int8 graph in ONNX Runtime only; in torch the encoder computes in float with the dequantized weights).
    Example:
        >>> model = torchslim.load("runs/digits/artifact")
        >>> session = torchslim.load("runs/digits/artifact", runtime="onnxruntime")
        >>> logits = session(torch.rand(4, 1, 8, 8))
    """
    from torchslim._errors import ConfigError
    from torchslim.artifact import load_artifact
    from torchslim.text.artifact import is_text_manifest, load_text_artifact

    if runtime not in RUNTIMES:
        raise ConfigError("runtime", f"must be one of {list(RUNTIMES)}, got {runtime!r}")
    manifest, data = open_verified(path, verify_key)
    if is_text_manifest(manifest):
        return load_text_artifact(path, runtime=runtime, intra_op_threads=intra_op_threads, opened=(manifest, data))
    model, manifest = load_artifact(path, trust_code=trust_code, code_dir=code_dir, model=model,
                                    opened=(manifest, data))
    if runtime == "torch":
        from torchslim.quantize.deploy import decode_for_inference_

        return _with_data_facts(decode_for_inference_(model), manifest)
    return _with_data_facts(ort_session_of(model, manifest, intra_op_threads), manifest)


def _with_data_facts(served: Any, manifest: dict[str, Any]) -> Any:
    """``served.labels`` (class names, index = output column) and ``served.preprocessing`` (how inputs were
    made from the raw data), from the manifest; a module's own attributes of those names are left as they are."""
    for name, value in (("labels", manifest.get("labels")), ("preprocessing", manifest.get("preprocessing"))):
        if value is not None and not hasattr(served, name):
            setattr(served, name, list(value) if isinstance(value, list) else value)
    return served


def open_verified(path: str | Path, verify_key: str | Path | None = None) -> tuple[dict[str, Any], bytes]:
    """``(manifest, tensor data)`` of an artifact, read and checked once, its signature verified first when
    ``verify_key`` is given; the manifest says which kind of model it holds (pass both on as ``opened=``)."""
    from torchslim.artifact import verify_artifact
    from torchslim.artifact._format import _open

    if verify_key is not None:  # before anything else is read
        verify_artifact(path, verify_key)
    return _open(path)[:2]


def ort_session_of(model: Any, manifest: dict[str, Any], intra_op_threads: int | None = None, *,
                   fastest: bool = False) -> Any:
    """ONNX Runtime session for a model loaded by ``load_artifact`` (see :func:`load`); with ``fastest``, on one
    thread or ``intra_op_threads``, whichever runs a batch of 64 faster (for timing: see
    :func:`torchslim.export.runtime.fastest_session`)."""
    from torchslim.export.artifact import example_input, module_onnx
    from torchslim.export.runtime import OrtSession, fastest_session

    data, int8 = module_onnx(model, manifest)
    if int8:
        _warn_of_overflowing_products(model)
    if fastest:
        import torch

        example = example_input(manifest, model)
        session = fastest_session(data, intra_op_threads or 1, torch.rand(64, *example.shape[1:]))
    else:
        session = OrtSession(data, intra_op_threads)
    session.int8 = int8
    return session


_WARNED_OF: set[tuple[str, ...]] = set()


def _warn_of_overflowing_products(model: Any) -> None:
    """Warn when this CPU's int8 products can overflow with the model's int8 weights: full 8-bit codes, made on a
    CPU with VNNI or with ``reduce_range: false``, run on x86 without VNNI (see
    :func:`torchslim.export.cpu.int8_products_saturate`)."""
    import warnings

    from torchslim._errors import TorchslimWarning
    from torchslim.export.cpu import int8_products_saturate
    from torchslim.quantize._layout import full_range_int8_layers

    if not int8_products_saturate():
        return
    layers = full_range_int8_layers(model)
    if layers and tuple(layers) not in _WARNED_OF:
        _WARNED_OF.add(tuple(layers))  # once per process (warnings' own registry is reset whenever filters change)
        named = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
        warnings.warn(f"the int8 weights of {named} reach beyond [-64, 64] and this CPU has no VNNI: ONNX "
                      f"Runtime's int8 products can overflow here, so the model may score lower than where it was "
                      f"measured; quantize it again with reduce_range: true (auto chooses it on such a CPU)",
                      TorchslimWarning, stacklevel=3)
