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
        the ``measure`` dict plus ``int8_kernels`` (ORT's integer kernels by op type, None when ORT did not
        run) and ``cpu_features`` (the CPU's int8 dot-product features).
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
    else:  # as torchslim.load serves it: weight-only / k-means layers decoded into plain ones
        import copy

        from torchslim.quantize.deploy import decode_for_inference_

        measured = measure(decode_for_inference_(copy.deepcopy(model)), test, metric, input_shape)
    return {**measured, "int8_kernels": kernels, "cpu_features": cpu_int8_features()}
