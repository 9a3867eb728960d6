"""Measure a reloaded artifact in the domain's runtime: torch, or ONNX Runtime (int8 kernels when stored)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset


def measure_in_runtime(model: nn.Module, manifest: dict[str, Any], test: Dataset, metric: str,
                       input_shape: tuple[int, ...], runtime: str, *, latency: bool = True) -> dict[str, Any]:
    """``evaluate.measure`` of a model loaded by ``load_artifact``, run the way the domain deploys it.

    With ``runtime == "onnxruntime"`` metric and latency come from an ONNX Runtime session (as many intra-op
    threads as torch uses, so both sides get the same cores); parameter counts and memory from the module.

    Returns:
        the ``measure`` dict plus ``int8_kernels`` (ORT's integer kernels by op type, None when ORT did not
        run), ``float_ops_in_int8`` (the float ops ORT runs between int8 ones, by op type; present when its
        int8 graph converts activations to int8 and back, as static int8 does) and ``cpu_features`` (the CPU's
        int8 dot-product features).
    """
    from torchslim.evaluate import measure
    from torchslim.export.cpu import cpu_int8_features

    predict = runtime_predict(model, manifest, runtime)
    measured = measure(predict, test, metric, input_shape, module=model if runtime == "onnxruntime" else None,
                       latency=latency)
    measured.update(int8_kernels=None, cpu_features=cpu_int8_features())
    if runtime == "onnxruntime":
        from torchslim.export.runtime import int8_graph_summary

        measured["int8_kernels"], float_ops = int8_graph_summary(predict.model)
        if float_ops is not None:
            measured["float_ops_in_int8"] = float_ops
    return measured


def runtime_predict(model: nn.Module, manifest: dict[str, Any], runtime: str, *, fastest: bool = False) -> Any:
    """What serves the model in ``runtime``.

    ``onnxruntime``: a session over the stored int8 model, or an fp32 export, with as many intra-op threads as torch
    uses, or with ``fastest`` (for timing) on one thread or that many, whichever is faster
    (:func:`~torchslim.export.runtime.fastest_session`: both sides within the same cores); ``torch``: the module as
    ``torchslim.load`` serves it (weight-only and k-means layers decoded into plain ones).
    """
    if runtime == "onnxruntime":
        from torchslim._load import ort_session_of

        return ort_session_of(model, manifest, intra_op_threads=torch.get_num_threads(), fastest=fastest)
    import copy

    from torchslim.quantize.deploy import decode_for_inference_

    return decode_for_inference_(copy.deepcopy(model))


def runtime_baseline(baseline: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """The fp32 baseline as an ONNX Runtime session (threads chosen as for the compressed model), or None when it
    does not export: the speed-up over torch then cannot be split into the runtime's and the compression's
    shares."""
    from torchslim.export.onnx_export import export_onnx
    from torchslim.export.runtime import fastest_session

    try:
        data = export_onnx(baseline.eval(), torch.rand(1, *input_shape))
        return fastest_session(data, torch.get_num_threads(), torch.rand(64, *input_shape))
    except Exception:  # noqa: BLE001  (the compressed model's own export says what fails, if it does)
        return None
