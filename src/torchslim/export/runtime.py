"""ONNX Runtime session as a torch-in, torch-out callable, and a check of which kernels it runs."""

from __future__ import annotations

import collections
import os
import re
import tempfile
from pathlib import Path
from typing import Union

import torch

ModelSource = Union[bytes, str, Path]

# Node types that mean ORT executes integer arithmetic (after its graph optimisations fuse QDQ groups).
QUANTIZED_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QAttention",
    "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "NhwcQLinearConv", "QEmbedLayerNormalization",
})


# ORT's graph fusions left out of every session: on x86 CPUs (ORT 1.32, AVX-512) its SkipLayerNormalization kernel
# ran 2-6x slower than the Add + LayerNormalization it replaces, at (64, 8, 128), (64, 128, 384) and (64, 64, 768),
# one thread or two; in a d = 128-256 encoder it was 40 % of the int8 model's time.
DISABLED_FUSIONS = ("SkipLayerNormFusion",)


def session_options(intra_op_threads: int | None, *, spin_after_runs: bool = False):
    """ONNX Runtime session options: every graph optimisation, ``intra_op_threads`` per operator (None: ORT's
    default, all cores), one inter-op thread (operators run in sequence).

    Worker threads busy-wait for the next operator within a run; with ``spin_after_runs`` False they sleep as soon
    as the run returns. Why: a pool that sleeps between operators pays a wake-up per operator (a d 256, 4-layer int8
    encoder at batch 64 on two threads took 6.8 ms with sleeping workers, 5.3 ms spinning; one thread: no
    difference), and a pool that keeps spinning after the run (ORT's default, the lowest latency for back-to-back
    calls) steals the cores of whatever runs next: the torch baseline in a side-by-side measurement, the user's
    own work.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads is not None:
        opts.intra_op_num_threads = int(intra_op_threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.add_session_config_entry("session.force_spinning_stop", "0" if spin_after_runs else "1")
    return opts


def flushes_denormals() -> bool:
    """Whether the calling thread flushes denormal floats to zero (x86 FTZ/DAZ): a denormal times one is zero."""
    import numpy as np

    return bool(np.float32(1e-39) * np.float32(1.0) == 0)


def new_session(model: ModelSource, opts):
    """An ONNX Runtime CPU session with denormal floats flushed to zero in its own threads, and the calling thread's
    floating-point mode left as it was (ORT sets it on the thread that creates a session).

    Why: a masked softmax's exponentials of very negative scores come out as denormals, which x86 computes far
    more slowly: ORT's Softmax over (32, 12, 46, 46) scores with padded keys at -1e4 took 2.5 ms against 0.6 ms with
    denormals flushed (2 threads), and MiniLM's int8 graph at batch 32 ran ~18 % faster (same embeddings).
    """
    import onnxruntime as ort

    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    caller = flushes_denormals()
    try:
        return ort.InferenceSession(_model_arg(model), opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(DISABLED_FUSIONS))
    finally:
        torch.set_flush_denormal(caller)


def run_flushing_denormals(session, outputs, feed: dict):
    """``session.run``, with the calling thread (which computes a share of each run) flushing denormals too, then
    back to its own mode."""
    caller = flushes_denormals()
    torch.set_flush_denormal(True)
    try:
        return session.run(outputs, feed)
    finally:
        torch.set_flush_denormal(caller)


def _model_arg(model: ModelSource):
    return model if isinstance(model, bytes) else str(model)


def _load_error(model: ModelSource, exc: Exception):
    """The one-line error for an ONNX model this ONNX Runtime cannot load, with the opset it asks for (an int8
    graph made by a newer runtime can use ops an older one lacks, e.g. the standard Attention of opset 23)."""
    import onnxruntime as ort

    from torchslim._errors import ConfigError

    try:
        import onnx

        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
        opset = next((f" (opset {op.version})" for op in proto.opset_import if op.domain in ("", "ai.onnx")), "")
    except Exception:
        opset = ""
    detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(exc).split()))
    detail = re.sub(r"^/\S+:\d+ .*?\) (?=[A-Z])", "", detail)  # ORT's source file and C++ signature
    # an op or opset this runtime lacks (a graph from a newer one), else a graph that is wrong in itself
    newer = re.search(r"not (?:yet )?(?:implemented|supported|registered)|Could not find an implementation|opset",
                      detail, re.IGNORECASE)
    hint = " (a model made with a newer onnxruntime needs that version or later)" if newer else ""
    return ConfigError("onnx model", f"ONNX Runtime {ort.__version__} cannot load it{opset}{hint}: {detail}")


class OrtSession:
    """Run an ONNX model in ONNX Runtime (CPU) like a torch module: tensors in, tensors out.

    Args:
        model: serialized ONNX bytes or a path to an .onnx file.
        intra_op_threads: threads for one operator (None = ORT's default, all cores).
    Example:
        >>> session = OrtSession(export_onnx(model, x), intra_op_threads=1)
        >>> y = session(x)  # torch.Tensor
    """

    def __init__(self, model: ModelSource, intra_op_threads: int | None = None):
        self.model, self.threads = model, intra_op_threads
        try:
            self.session = new_session(model, session_options(intra_op_threads))
        except Exception as exc:  # ORT's own error types; an artifact's int8 graph may come from a newer runtime
            raise _load_error(model, exc) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, *inputs):
        """Run on CPU copies of ``inputs`` (torch tensors or numpy arrays); outputs come back as the inputs came:
        torch tensors for tensors, numpy arrays for arrays (one, or a tuple)."""
        import numpy as np

        if len(inputs) != len(self.input_names):
            raise ValueError(f"model takes {len(self.input_names)} inputs, got {len(inputs)}")
        arrays = all(not isinstance(t, torch.Tensor) for t in inputs)
        feed = {name: (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float32))
                for name, t in zip(self.input_names, inputs)}
        outs = run_flushing_denormals(self.session, self.output_names, feed)
        if not arrays:
            outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)


def fastest_session(model: ModelSource, most: int, example: torch.Tensor, *, rounds: int = 6,
                    runs: int = 5) -> OrtSession:
    """An :class:`OrtSession` on one intra-op thread or on ``most``, whichever runs ``example`` faster (medians of
    alternating rounds; a tie goes to one thread). Why: ORT splits every operator it can across its threads, and
    for a small int8 model the hand-offs cost more than the work (LeNet-5, 50 % structured + static int8, batch 64:
    0.145 ms on one thread, 0.253 ms on two; its fp32 export 0.529 and 0.304), while torch keeps small operators on
    one thread by itself. Both stay within the ``most`` cores torch is given."""
    import statistics
    import time

    if most <= 1:
        return OrtSession(model, 1)
    sessions = {n: OrtSession(model, n) for n in (1, most)}
    for session in sessions.values():
        session(example)
    times: dict[int, list[float]] = {n: [] for n in sessions}
    for r in range(rounds):
        for n in (1, most) if r % 2 == 0 else (most, 1):
            calls = []
            for _ in range(runs):
                start = time.perf_counter()
                sessions[n](example)
                calls.append(time.perf_counter() - start)
            times[n].append(statistics.median(calls))
    return sessions[min(times, key=lambda n: (statistics.median(times[n]), n))]


def optimized_graph(model: ModelSource):
    """The graph ORT actually executes on CPU, after all its optimisations (fusions), as an onnx GraphProto."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="torchslim-ort-") as tmp:
        opts = session_options(1)
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(_model_arg(model), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(DISABLED_FUSIONS))
        return onnx.load(opts.optimized_model_filepath).graph


def optimized_op_counts(model: ModelSource) -> collections.Counter:
    """Op types of the graph ORT actually executes on CPU, after all its optimisations (fusions).

    Returns:
        Counter of node op types in ORT's optimised graph.
    """
    return collections.Counter(node.op_type for node in optimized_graph(model).node)


def quantized_kernels(model: ModelSource) -> dict[str, int]:
    """The integer kernels ORT runs for ``model`` (empty when it computes everything in float).

    Returns:
        {op_type: count} restricted to QUANTIZED_OPS, e.g. {"QLinearConv": 2, "QGemm": 2}.
    """
    return _kernels(optimized_graph(model))


def _kernels(graph) -> dict[str, int]:
    counts = collections.Counter(node.op_type for node in graph.node)
    return {op: n for op, n in sorted(counts.items()) if op in QUANTIZED_OPS}


# Ops that move, reshape or re-lay values without arithmetic (ORT's NCHWc reorders included).
_DATA_MOVEMENT = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape",
                            "Concat", "Split", "Slice", "Gather", "Cast", "ReorderInput", "ReorderOutput"})


def _float_islands(graph) -> dict[str, int] | None:
    """Float ops ORT runs between int8 ones: nodes that take a dequantized activation or hand their output to a
    QuantizeLinear, directly or through data movement (each then costs a pass to float and one back to int8);
    None for a graph that converts no activation (dynamic int8)."""
    constants = {i.name for i in graph.initializer}
    dequantized = {n.output[0] for n in graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] not in constants}
    to_quantize = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    if not dequantized and not to_quantize:  # dynamic int8: each int8 op quantizes its own float input
        return None
    moves = [n for n in graph.node if n.op_type in _DATA_MOVEMENT]
    for _ in moves:  # follow data movement forward from the dequantized values, backward from the quantized
        grew = False
        for n in moves:
            if dequantized & set(n.input) and not set(n.output) <= dequantized:
                dequantized |= set(n.output)
                grew = True
            if to_quantize & set(n.output) and n.input and n.input[0] not in to_quantize:
                to_quantize.add(n.input[0])
                grew = True
        if not grew:
            break
    skip = QUANTIZED_OPS | _DATA_MOVEMENT | {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
    counts = collections.Counter(
        n.op_type for n in graph.node
        if n.op_type not in skip and (dequantized & set(n.input) or to_quantize & set(n.output)))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def int8_graph_summary(model: ModelSource) -> tuple[dict[str, int], dict[str, int] | None]:
    """(integer kernels by op type, float ops between int8 ones by op type, or None where the graph converts no
    activation to int8 and back: dynamic int8) of the graph ORT runs for ``model``,
    from one optimisation pass. Why the second: ORT has no int8 kernel for many activations (HardSwish, GELU,
    ...); each such op between int8 layers costs a dequantize and a quantize pass the fp32 graph does not pay,
    which can make an int8 model slower than its fp32 export."""
    graph = optimized_graph(model)
    kernels = _kernels(graph)
    return kernels, (_float_islands(graph) if kernels else None)
