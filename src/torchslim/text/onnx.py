"""The sentence encoder in ONNX Runtime: export, transformer fusions, int8, a session that encodes sentences.

    data = export_onnx(encoder)                  # fp32, inputs input_ids/attention_mask, output embedding
    data = fuse(data, encoder)                   # Attention, Gelu, LayerNormalization (ORT's optimizer)
    data = quantize_int8(data, Int8Config(method="dynamic", per_channel=True), calibration=batches)
    vectors = OrtEncoder(data, intra_op_threads=2).encode(sentences, tokenizer)

Why the TorchScript exporter: it writes BERT's attention as MatMul/Reshape/Transpose/Softmax with the head count
as a constant in each Reshape, the pattern ``onnxruntime.transformers`` fuses into one ``Attention`` node per
layer; with ``num_heads=0`` the fusion reads each layer's head count from those constants, so a pruned encoder
whose layers keep different numbers of heads fuses too. The quantizer is in :mod:`torchslim.text._int8`, the
storage helpers (initializers apart from the graph) in :mod:`torchslim.text._initializers`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from torchslim.export.runtime import new_session, run_flushing_denormals, session_options
from torchslim.text._initializers import join_initializers, split_initializers
from torchslim.text._int8 import Int8Config, quantize_int8
from torchslim.text.encoder import SentenceEncoder

__all__ = ["FUSED_OPS", "Int8Config", "OrtEncoder", "export_onnx", "fuse", "fused_op_counts",
           "join_initializers", "quantize_int8", "split_initializers"]

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"
OPSET = 17
# op types ORT's transformer optimizer writes (com.microsoft domain) and its int8 quantizer
FUSED_OPS = ("Attention", "QAttention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "LayerNormalization", "BiasGelu", "Gelu", "FastGelu", "DynamicQuantizeMatMul", "MatMulInteger",
             "MatMulIntegerToFloat", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear")


def export_onnx(encoder: SentenceEncoder) -> bytes:
    """fp32 ONNX of ``encoder``: (input_ids, attention_mask) int64 (batch, sequence) -> embedding (batch, hidden).

    Both axes are dynamic; the bytes depend only on the weights (node debug metadata is stripped).
    """
    from torchslim.export.onnx_export import strip_onnx_metadata

    model = encoder.to("cpu").eval()
    ids = torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]], dtype=torch.long) % model.config["vocab_size"]
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            OUTPUT: {0: "batch"}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer warnings
        torch.onnx.export(model, (ids, mask), buf, input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return strip_onnx_metadata(buf.getvalue())


def fuse(onnx_bytes: bytes, encoder: SentenceEncoder) -> bytes:
    """ONNX Runtime's BERT fusions (``optimize_model(model_type="bert")``), written into the graph, but for
    SkipLayerNormalization (see ``export.runtime.DISABLED_FUSIONS``: slower than the Add + LayerNormalization it
    replaces on x86 CPUs; MiniLM's dynamic int8 at batch 32 ran 1.5x torch's speed with it, 1.96x without) and
    BiasGelu: with the FFN's bias left in its MatMul, int8 adds it inside the product's kernel and a plain Gelu
    follows (MiniLM's dynamic int8 at batch 32, 2 threads: 64.4 against 75.8 ms; fp32 151.7 against 155.0).

    Args:
        onnx_bytes: what :func:`export_onnx` wrote for ``encoder``.
        encoder: gives the hidden size and the heads; when layers differ in head count or heads were pruned
            (heads x head_dim != hidden), ``num_heads=0`` makes the fusion read each layer's heads from its
            Reshape constants.
    Returns:
        The fused model; :func:`fused_op_counts` says which fusions happened.
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = encoder.config
    heads = set(cfg["heads"])
    num_heads, hidden = 0, 0  # 0, 0: each layer's heads and width read from its Reshape constants
    if len(heads) == 1 and heads.pop() * cfg["head_dim"] == cfg["hidden_size"]:
        num_heads, hidden = cfg["heads"][0], cfg["hidden_size"]
    with tempfile.TemporaryDirectory(prefix="torchslim-fuse-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx_bytes)
        # opt_level=0: only the transformer fusions; ORT's own graph optimisations run when a session loads it
        with _quiet_loggers("onnxruntime", "fusion_base", "onnx_model", "fusion_attention"):
            options = FusionOptions("bert")
            options.enable_skip_layer_norm = False
            options.enable_bias_gelu = False
            fused = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden,
                                   opt_level=0, use_gpu=False, optimization_options=options)
    model = fused.model
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        # ORT's contrib ops live in this domain; shape inference (which the quantizer runs) wants it declared
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model.SerializeToString()


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """ORT's transformer optimizer logs its fusion attempts (warnings when a pattern does not match, e.g. pruned
    heads whose width differs from the hidden size): not the user's concern, since the counts say what fused."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fused_op_counts(onnx_bytes: bytes) -> dict[str, int]:
    """{op type: count} of the fused and quantized op types (:data:`FUSED_OPS`) in a graph."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load_from_string(onnx_bytes).graph.node:
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _session(onnx_bytes: bytes, intra_op_threads: int | None, spinning: bool = True):
    return new_session(onnx_bytes, session_options(intra_op_threads, spin_after_runs=spinning))


class OrtEncoder:
    """An ONNX sentence encoder in ONNX Runtime (CPU), called like the torch one.

    Args:
        onnx_bytes: any model with inputs input_ids/attention_mask and output embedding (fp32, fused or int8).
        intra_op_threads: threads for one operator (None: ORT's default, all cores).
        spinning: ORT's worker threads keep busy-waiting after each run (its default: the lowest latency for
            back-to-back calls). False: they spin within a run and sleep when it returns, for when something else
            computes in the same process between runs (a side-by-side benchmark), which they would slow down.
    Example:
        >>> vectors = OrtEncoder(export_onnx(encoder), intra_op_threads=2)(ids, mask)  # (N, hidden) float32
    """

    def __init__(self, onnx_bytes: bytes, intra_op_threads: int | None = None, spinning: bool = True):
        self.session = _session(onnx_bytes, intra_op_threads, spinning)

    def run(self, input_ids, attention_mask) -> np.ndarray:
        """numpy in (or torch), numpy (N, hidden) float32 out."""
        feed = {name: (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)).astype(np.int64)
                for name, t in zip(INPUTS, (input_ids, attention_mask))}
        return run_flushing_denormals(self.session, [OUTPUT], feed)[0]

    def __call__(self, input_ids, attention_mask) -> torch.Tensor:
        return torch.from_numpy(self.run(input_ids, attention_mask))

    def encode(self, sentences: Sequence[str], tokenizer, batch_size: int = 32) -> torch.Tensor:
        """(len(sentences), hidden) embeddings; ``tokenizer`` is a :class:`torchslim.text.Tokenizer`."""
        out = [self(*tokenizer(sentences[i:i + batch_size])) for i in range(0, len(sentences), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 0)
