"""fp32 ONNX export with a dynamic batch axis, through torch's dynamo-based exporter.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is the one torch maintains; the TorchScript
exporter is deprecated. It handles Linear/Conv/BN/pooling/TransformerEncoder with a symbolic batch
dimension. Quantized torch layers (weight-only, k-means, QAT) are exported as their dequantized fp32
equivalents; int8 graphs come from ONNX Runtime's quantizer (see torchslim.export.ort_quant).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn


def _as_tuple(example_input) -> tuple[torch.Tensor, ...]:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def input_names(n: int) -> list[str]:
    """ONNX input names used by :func:`export_onnx`: ``input`` or ``input_0``, ``input_1``, ..."""
    return ["input"] if n == 1 else [f"input_{i}" for i in range(n)]


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and registry warnings; keep the user's console clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def not_exportable(model: nn.Module) -> dict[str, str]:
    """{module name: why} for the layers torch's ONNX exporter writes as something ONNX Runtime cannot run, so a
    recipe that needs the model in ONNX is refused before it trains."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.LSTM) and module.proj_size > 0:
            found[name] = "an LSTM with proj_size, which ONNX's LSTM cannot express"
    return found


def check_exportable(model: nn.Module, field: str, needs: str, instead: str) -> None:
    """ConfigError naming ``field`` when ``model`` holds a layer of :func:`not_exportable`: ``needs`` says what asks
    for ONNX, ``instead`` what to do."""
    from torchslim._errors import ConfigError

    found = not_exportable(model)
    if found:
        name, why = next(iter(found.items()))
        raise ConfigError(field, f"{needs}, and {name or 'the model'} is {why}; {instead}")


def to_onnx_proto(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor], *,
                  dynamic_batch: bool = True):
    """Export ``model`` (eval mode, a CPU copy) to an in-memory ``onnx.ModelProto``.

    Args:
        model: float model, or one holding torchslim QuantizedLayer modules (exported dequantized).
        example_input: one tensor or a tuple of tensors, batch first.
        dynamic_batch: make axis 0 of every input and output symbolic ("batch").
    Returns:
        onnx.ModelProto with inputs named by :func:`input_names` and outputs ``output``/``output_i``.
    """
    from torchslim.quantize.modules import QuantizedLayer, QuantizedRecurrent, dequantize_model

    check_exportable(model, "onnx", "the model was to be exported", "keep it in torch")
    args = tuple(t.detach().cpu() for t in _as_tuple(example_input))
    model = copy.deepcopy(model).cpu().eval()
    if any(isinstance(m, (QuantizedLayer, QuantizedRecurrent)) for m in model.modules()):
        dequantize_model(model)
    if dynamic_batch and args[0].shape[0] == 1:
        # torch.export specialises size-1 dimensions; a batch of 2 keeps the axis symbolic
        args = tuple(torch.cat([a, a]) for a in args)
    with torch.no_grad():
        n_out = len(_as_tuple(model(*args)))
    outputs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in args)
    with _quiet():
        program = torch.onnx.export(model, args, dynamo=True, verbose=False, input_names=input_names(len(args)),
                                    output_names=outputs, dynamic_shapes=dynamic_shapes, optimize=True)
    return program.model_proto


def strip_onnx_metadata(data: bytes) -> bytes:
    """The same ONNX model without per-node debug metadata (stack traces with absolute paths, fx node text).

    The runtime never reads them; without them the bytes depend only on the model, not on where the code lives,
    so stored and exported files are reproducible.
    """
    import onnx

    model = onnx.load_from_string(data)

    def clean(graph) -> None:
        graph.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.HasField("g"):
                    clean(attr.g)
                for sub in attr.graphs:
                    clean(sub)

    clean(model.graph)
    model.doc_string = ""
    return model.SerializeToString()


def export_onnx(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor],
                path: str | Path | None = None, *, dynamic_batch: bool = True) -> bytes:
    """Export ``model`` to fp32 ONNX (dynamic batch axis), optionally writing it to ``path``.

    Args:
        model: float or torchslim-quantized torch model.
        example_input: tensor or tuple of tensors with the model's input shapes.
        path: where to write the .onnx file (parent folders are created); None keeps it in memory.
        dynamic_batch: symbolic axis 0.
    Returns:
        The serialized ONNX model (node debug metadata stripped: same model, same bytes).
    Example:
        >>> data = export_onnx(nn.Linear(4, 2), torch.randn(3, 4))
    """
    data = strip_onnx_metadata(to_onnx_proto(model, example_input, dynamic_batch=dynamic_batch).SerializeToString())
    if path is not None:
        from torchslim.artifact import write_bytes_atomic

        write_bytes_atomic(path, data)
    return data
