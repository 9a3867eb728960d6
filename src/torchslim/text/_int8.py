"""int8 sentence encoders for ONNX Runtime: dynamic or calibrated static, with fragile nodes kept in fp32.

Dynamic (``quantize_dynamic``): weights int8 at rest; each activation is quantized per batch at run time, so no
calibration is needed; ORT turns MatMul into ``DynamicQuantizeMatMul`` and a fused ``Attention`` into
``QAttention``. Static (``quantize_static``, QDQ): activation ranges come from calibration batches; only MatMuls
with constant weights are quantized (``MatMulConstBOnly``: the Q.K^T and probs.V products of an unfused graph keep
float). Sensitivity (``keep_fp32="auto"``): every quantizable node is left out alone, the ones whose exclusion
restores the most cosine to the fp32 embeddings are kept fp32, one by one, until the target is met.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal, Sequence, Union

import numpy as np
import pydantic

from torchslim._validation import StrictModel
from torchslim.export.cpu import weights_reduce_range
from torchslim.export.ort_quant import quiet_ort_logging
from torchslim.export.runtime import run_flushing_denormals

Batch = tuple  # (input_ids, attention_mask), torch or numpy, (N, T) each


class Int8Config(StrictModel):
    """How :func:`quantize_int8` quantizes.

    Args:
        method: "dynamic" (activations quantized per batch at run time) or "static" (calibrated ranges, QDQ).
        per_channel: one weight scale per output column rather than per tensor.
        keep_fp32: node names left in float, or "auto": the sensitivity search below.
        cosine_target: what "auto" keeps fp32 nodes for: mean cosine to the fp32 embeddings on the calibration
            batches.
        max_keep: at most this many nodes kept fp32 by "auto".
        embeddings: quantize the word-embedding Gather too (int8 table: 4x smaller, a little less accurate).
        attention: quantize fused Attention nodes (QAttention; dynamic only, ORT has no static QAttention).
        calibrate: static activation ranges: "minmax", "percentile" or "entropy".
        percentile: for "percentile".
        moving_average: min/max averaged over calibration batches rather than the extremes ("minmax").
        reduce_range: weights in [-64, 64] (for x86 CPUs without VNNI, whose int8 products overflow with full 8-bit
            weights); "auto": on such a CPU (:func:`torchslim.export.cpu.int8_products_saturate`).
        symmetric_activations: static activations int8 symmetric rather than uint8 with a zero point.
    """

    method: Literal["dynamic", "static"] = "dynamic"
    per_channel: bool = True
    keep_fp32: Union[Literal["auto"], tuple[str, ...]] = ()
    cosine_target: float = pydantic.Field(0.99, gt=0.0, le=1.0)
    max_keep: int = pydantic.Field(8, ge=0)
    embeddings: bool = False
    attention: bool = True
    calibrate: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = pydantic.Field(99.999, gt=50.0, le=100.0)
    moving_average: bool = False
    reduce_range: Union[Literal["auto"], bool] = "auto"
    symmetric_activations: bool = False


def quantizable_nodes(onnx_bytes: bytes, config: Int8Config) -> list[str]:
    """Names of the nodes ``config`` would quantize: MatMuls with a constant weight, fused Attention (dynamic),
    the word-embedding Gather (``embeddings``)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    consts = {i.name for i in graph.initializer}
    names = []
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in consts:
            names.append(node.name)
        elif node.op_type == "Attention" and config.attention and config.method == "dynamic":
            names.append(node.name)
        elif node.op_type == "Gather" and config.embeddings and node.input[0] in consts and "word" in node.input[0]:
            names.append(node.name)
    return names


def _op_types(config: Int8Config) -> list[str]:
    ops = ["MatMul"]
    if config.method == "dynamic" and config.attention:
        ops.append("Attention")
    if config.embeddings:
        ops.append("Gather")
    return ops


def _feeds(batches: Sequence[Batch]) -> list[dict[str, np.ndarray]]:
    def arr(t):
        return (t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)).astype(np.int64)

    return [{"input_ids": arr(ids), "attention_mask": arr(mask)} for ids, mask in batches]


def _typed(onnx_bytes: bytes):
    """The model with every tensor's type and shape recorded. ONNX's own shape inference does not know ORT's
    contrib ops (Attention, SkipLayerNormalization); without types after them the quantizer cannot tell that a
    MatMul's input is float and leaves the activations unquantized (weight-only QDQ)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(onnx.load_from_string(onnx_bytes), auto_merge=True)


def _same_length(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Batches padded to one length: ORT's histogram calibrators stack every batch's tensors into one array.
    (Padded positions add activations the model masks out; a small bias of the histograms.)"""
    width = max(f["input_ids"].shape[1] for f in feeds)
    return [{k: np.pad(v, ((0, 0), (0, width - v.shape[1]))) for k, v in f.items()} for f in feeds]


def _quantize_once(typed, config: Int8Config, exclude: Sequence[str], feeds, tmp: Path) -> bytes:
    """One quantization of ``typed`` (:func:`_typed`) with ``exclude`` left float; static ranges are computed once
    per ``tmp`` (a cache)."""
    import copy

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    model = copy.deepcopy(typed)  # the quantizer edits the graph it is given
    out = tmp / "int8.onnx"
    ops = _op_types(config)
    # embeddings: every Gather other than the word table (positions, shapes) stays float
    exclude = list(exclude) + [n.name for n in model.graph.node if n.op_type == "Gather"
                               and not (config.embeddings and "word" in n.input[0])]
    # DefaultTensorType: shape inference cannot type the outputs of ORT's contrib ops (Attention, SkipLayerNorm)
    extra = {"WeightSymmetric": True, "MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}
    if config.method == "dynamic":
        quantize_dynamic(model, out, op_types_to_quantize=ops, per_channel=config.per_channel,
                         reduce_range=weights_reduce_range(config.reduce_range), weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                         extra_options=extra)
        return out.read_bytes()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.calibrate]
    extra.update(ActivationSymmetric=config.symmetric_activations, CalibMovingAverage=config.moving_average,
                 CalibPercentile=config.percentile)
    if config.calibrate != "minmax":
        feeds = _same_length(feeds)
    cache = tmp / f"ranges-{config.calibrate}.json"
    quantize_static(model, out, Reader() if not cache.exists() else None, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=ops, per_channel=config.per_channel, reduce_range=weights_reduce_range(config.reduce_range),
                    activation_type=QuantType.QInt8 if config.symmetric_activations else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=method,
                    extra_options=extra, calibration_cache_path=cache)
    return out.read_bytes()


def _mean_cosine(session, feeds, reference: list[np.ndarray]) -> float:
    cos = []
    for feed, ref in zip(feeds, reference):
        got = run_flushing_denormals(session, ["embedding"], feed)[0]
        num = (got * ref).sum(1)
        den = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12
        cos.append(num / den)
    return float(np.concatenate(cos).mean())


def embedding_cosine(candidate: bytes, reference: bytes, batches: Sequence[Batch], threads: int = 2) -> float:
    """Mean cosine between two ONNX encoders' embeddings on ``batches``."""
    from torchslim.text.onnx import _session

    feeds = _feeds(batches)
    ref = _session(reference, threads)
    return _mean_cosine(_session(candidate, threads), feeds,
                        [run_flushing_denormals(ref, ["embedding"], f)[0] for f in feeds])


def sensitivity(onnx_bytes: bytes, config: Int8Config, calibration: Sequence[Batch]) -> list[tuple[str, float]]:
    """[(node, mean cosine with only that node left float)], most fragile first (leave-one-out)."""
    with _Search(onnx_bytes, config, calibration) as search:
        return search.leave_one_out()


class _Search:
    """Quantizes with different nodes kept fp32 and scores each by cosine to the fp32 model (one temp folder,
    so static calibration runs once)."""

    def __init__(self, onnx_bytes: bytes, config: Int8Config, calibration: Sequence[Batch]):
        from torchslim.text.onnx import _session

        self.onnx_bytes, self.config = onnx_bytes, config
        self.typed = _typed(onnx_bytes)  # once: shape inference costs more than quantizing
        self.feeds = _feeds(calibration)
        fp32 = _session(onnx_bytes, None)
        self.reference = [run_flushing_denormals(fp32, ["embedding"], f)[0] for f in self.feeds]
        self._dir = tempfile.TemporaryDirectory(prefix="torchslim-int8-")
        self.tmp = Path(self._dir.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._dir.cleanup()

    def quantize(self, keep: Sequence[str]) -> bytes:
        with quiet_ort_logging():
            return _quantize_once(self.typed, self.config, keep, self.feeds, self.tmp)

    def score(self, keep: Sequence[str]) -> tuple[bytes, float]:
        from torchslim.text.onnx import _session

        data = self.quantize(keep)
        return data, _mean_cosine(_session(data, None), self.feeds, self.reference)

    def leave_one_out(self) -> list[tuple[str, float]]:
        scores = [(name, self.score([name])[1]) for name in quantizable_nodes(self.onnx_bytes, self.config)]
        return sorted(scores, key=lambda s: -s[1])


def quantize_int8(onnx_bytes: bytes, config: Int8Config | None = None, calibration: Sequence[Batch] = (),
                  *, report: dict | None = None) -> bytes:
    """int8 model from an fp32 (fused or plain) sentence-encoder model.

    Args:
        onnx_bytes: fp32 model (:func:`export_onnx`, :func:`fuse`).
        config: :class:`Int8Config` (default: dynamic, per-channel, nothing kept fp32).
        calibration: (input_ids, attention_mask) batches: static ranges, and the cosine "auto" measures.
        report: if given, filled with {"kept_fp32": [...], "cosine": calibration cosine, "sensitivity": [...]}.
    Returns:
        The quantized model's bytes.
    """
    from torchslim._errors import ConfigError

    config = config or Int8Config()
    auto = config.keep_fp32 == "auto"
    if (config.method == "static" or auto) and not calibration:
        raise ConfigError("calibration", f"{'static quantization' if config.method == 'static' else 'keep_fp32: auto'}"
                                         " needs calibration batches")
    if not auto:
        known = set(quantizable_nodes(onnx_bytes, config))
        unknown = [n for n in config.keep_fp32 if n not in known]
        if unknown:
            raise ConfigError("keep_fp32", f"no quantizable node named {unknown[0]!r} "
                                           f"(known: {', '.join(sorted(known)[:6])}, ...)")
    if not calibration:
        with tempfile.TemporaryDirectory(prefix="torchslim-int8-") as tmp, quiet_ort_logging():
            return _quantize_once(_typed(onnx_bytes), config, list(config.keep_fp32), [], Path(tmp))
    with _Search(onnx_bytes, config, calibration) as search:
        keep: list[str] = [] if auto else list(config.keep_fp32)
        data, cosine = search.score(keep)
        ranking: list[tuple[str, float]] = []
        if auto and cosine < config.cosine_target and config.max_keep > 0:
            ranking = search.leave_one_out()
            for name, _ in ranking[:config.max_keep]:
                keep.append(name)
                data, cosine = search.score(keep)
                if cosine >= config.cosine_target:
                    break
        if report is not None:
            report.update(kept_fp32=keep, cosine=cosine, sensitivity=ranking)
        return data
