"""Measure a reloaded artifact in the domain's runtime: torch, or ONNX Runtime (int8 kernels when stored)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset


def measure_in_runtime(model: nn.Module, manifest: dict[str, Any], test: Dataset, metric: str,
                       input_shape: tuple[int, ...], runtime: str) -> dict[str, Any]:
    """``evaluate.measure`` of a model loaded by ``load_artifact``, run the way the domain deploys it.

    With ``runtime == "onnxruntime"`` metric and latency come from an ONNX Runtime session (as many intra-op
    threads as torch uses, so both sides get the same cores); parameter counts and memory from the module.

    Returns:
        the ``measure`` dict (a quantized weight counted as one parameter per element) plus ``int8_kernels`` (ORT's integer kernels by op type, None when ORT did not run)
        and ``cpu_features`` (the CPU's int8 dot-product features).
    """
    from torchslim.evaluate import measure
    from torchslim.export.cpu import cpu_int8_features

    kernels = None
    if runtime == "onnxruntime":
        from torchslim._load import ort_session_of
        from torchslim.export.runtime import quantized_kernels

        session = ort_session_of(model, manifest, intra_op_threads=torch.get_num_threads())
        measured = measure(session, test, metric, input_shape, module=model)
        kernels = quantized_kernels(session.model)
    else:
        measured = measure(model, test, metric, input_shape)
    from torchslim.quantize.modules import count_weights

    # quantized weights are stored as codes (buffers), still one parameter each
    measured["params"], measured["nonzero_params"] = count_weights(model)
    return {**measured, "int8_kernels": kernels, "cpu_features": cpu_int8_features()}


def runtime_markdown(metrics: dict[str, Any]) -> str:
    """A report section saying which kernels ran and what int8 support the CPU has."""
    kernels = metrics.get("int8_kernels")
    if kernels is None:
        ran = "ONNX Runtime was not used (runtime `torch`)."
    elif kernels:
        ran = "ONNX Runtime ran integer kernels: " + ", ".join(f"{op} ×{n}" for op, n in kernels.items()) + "."
    else:
        ran = "ONNX Runtime ran float kernels only (the artifact holds no int8 model)."
    cpu = metrics.get("cpu_features", {})
    flags = [k for k, v in cpu.items() if v is True]
    lines = ["## Runtime", "", f"Compressed model measured in `{metrics.get('runtime')}`; baseline in `torch`. {ran}",
             f"CPU `{cpu.get('machine', '?')}` int8 features: {', '.join(flags) if flags else 'none detected'}.", ""]
    return "\n".join(lines)
