"""The report's sections, built from ``metrics.json`` alone: every number is one the run measured.

Sections are lists of blocks (see :mod:`torchslim.report._document`); Markdown and HTML are written from the same
blocks, the HTML page adding the plots.
"""

from __future__ import annotations

from typing import Any, Optional

from torchslim.evaluate import speedup, timing_caveat
from torchslim.report._document import Block, Figure, Heading, Items, Paragraph, Table, to_html, to_markdown
from torchslim.report._plots import layers_png, plots_available, sensitivity_png, stages_png

DASH = "—"


def _fmt_bytes(n: Optional[float]) -> str:
    if n is None:  # not measurable here (e.g. no /proc for ONNX Runtime's memory)
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB"):  # powers of 1024, named so
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(v: Optional[float]) -> str:
    return DASH if v is None else f"{100 * v:.2f} %"


def _metric(m: dict[str, Any], v: Optional[float]) -> str:
    """Accuracies as percentages; a cosine (of embeddings to the fp32 model's) as the number it is."""
    return _pct(v) if m["metric"] != "cosine" else (DASH if v is None else f"{v:.4f}")


def summary_rows(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(quantity, baseline, compressed) rows shared by the terminal summary and the report."""
    extra = [("spearman (pair similarities)", f"{m['baseline_spearman']:.4f}", f"{m['spearman']:.4f}")
             ] if "spearman" in m else []
    return [
        (m["metric"], _metric(m, m["baseline_value"]), _metric(m, m["value"])),
        *extra,
        ("size on disk", _fmt_bytes(m["baseline_size_bytes"]), _fmt_bytes(m["size_bytes"])),
        ("compression ratio", "1.00x", f"{m['compression_ratio']:.2f}x"),
        ("params", f"{m['baseline_params']:,}", f"{m['params']:,}"),
        ("nonzero params", "", f"{m['nonzero_params']:,}"),
        ("latency batch 1", f"{m['baseline_latency_ms']['batch_1']:.3f} ms", f"{m['latency_ms']['batch_1']:.3f} ms"),
        *[(f"latency batch {key.removeprefix('batch_')}", f"{m['baseline_latency_ms'][key]:.3f} ms",
           f"{m['latency_ms'][key]:.3f} ms (speed-up {speedup(m, key):.2f}x"
           + ("" if m.get("latency_spread", {}).get(key, {}).get("significant", True) else ", within noise") + ")")
          for key in ("batch_32", "batch_64") if key in m["latency_ms"]],  # batch 32: sentence embeddings
        *_runtime_rows(m),
        ("peak memory (batch 64)", _fmt_bytes(m["baseline_peak_memory_bytes"]), _fmt_bytes(m["peak_memory_bytes"])),
    ]


def _runtime_rows(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The baseline's fp32 export timed in the compressed model's runtime in the same rounds: how the speed-up
    over torch splits into the runtime's share and the compression's."""
    runtime = m.get("baseline_runtime_latency_ms")
    spread = m.get("latency_spread", {}).get("batch_64", {})
    if not runtime or "runtime_ratio" not in spread:
        return []
    return [("baseline in ONNX Runtime fp32, batch 64", f"{runtime['batch_64']:.3f} ms",
             f"runtime {spread['runtime_ratio']:.2f}x, compression {spread['compression_ratio']:.2f}x")]


_SIMULATED = ("static", "dynamic", "qat")  # methods whose int8 arithmetic only ONNX Runtime executes


def slowdown_reason(m: dict[str, Any]) -> str | None:
    """Why the compressed model is slower than its baseline at batch 1 or 64, or None when it is not."""
    spread = m.get("latency_spread", {})  # a difference within the rounds' noise is not a slowdown
    # judged on the speed-up the summary shows (the median of the side-by-side rounds' ratios), not on the two
    # medians: they can disagree when the ratio is near 1
    slower = [b for b in ("batch_1", "batch_64")
              if speedup(m, b) < 1.0 and spread.get(b, {}).get("significant", True)]
    if not slower:
        return None
    where = " and ".join(b.replace("_", " ") for b in slower)
    methods = {r.get("method") for r in m.get("stages", []) if r.get("stage") == "quantize"}
    methods |= set(m.get("quantize_methods", ()))  # eval: from the artifact's recorded recipe
    if m["runtime"] == "torch" and methods & set(_SIMULATED):
        why = ("runtime `torch` simulates int8: every quantized layer fake-quantizes its input and computes in "
               "float; set `runtime: onnxruntime` to run int8 kernels")
    elif m["runtime"] == "onnxruntime" and not m.get("int8_kernels"):
        why = ("ONNX Runtime runs an fp32 export here, and its per-call overhead can exceed torch's on a model "
               "this small")
    elif m["runtime"] == "onnxruntime" and "compression_ratio" in spread.get("batch_64", {}):
        ratios = spread["batch_64"]  # the baseline's fp32 export, timed in ONNX Runtime in the same rounds
        runtime, int8 = ratios["runtime_ratio"], ratios["compression_ratio"]
        if int8 < min(1.0, runtime):  # the larger loss names the cause
            why = (f"in ONNX Runtime the int8 graph runs at {int8:.2f}x the speed of the baseline's own fp32 "
                   f"export at batch 64: {_int8_cost(m)}")
        else:
            why = (f"ONNX Runtime runs the baseline's fp32 export at {runtime:.2f}x torch's speed at batch 64, and "
                   + (f"int8 wins back only {int8:.2f}x of it" if int8 >= 1.0 else f"the int8 graph at {int8:.2f}x "
                      f"that"))
    elif m["params"] == m["baseline_params"]:
        why = ("the model computes the same dense arithmetic as its baseline (zeros and shared weights shrink the "
               "file, not the work), so the two differ by measurement noise only")
    else:
        why = "measured side by side in one process; small models are dominated by per-call overhead"
    return f"Slower than the baseline at {where}: {why}."


def _int8_cost(m: dict[str, Any]) -> str:
    """What makes an int8 graph slower than the same model's fp32 export in ONNX Runtime."""
    float_ops = m.get("float_ops_in_int8") or {}
    if not float_ops:
        return "on layers this small, converting activations to and from int8 costs more than the int8 products save"
    ops = ", ".join(f"{op} ×{n}" for op, n in float_ops.items())
    return (f"it computes {ops} in float between its int8 ops (ops ONNX Runtime has no int8 kernel for, or "
            f"layers kept float), each with a pass converting its input from int8 or its output back to it, which "
            f"the fp32 graph does not pay")


def int8_slowdown_reason(m: dict[str, Any]) -> str | None:
    """Why an int8 model that is faster than its torch baseline is slower than the baseline's own fp32 export in
    ONNX Runtime (the speed-up is then the runtime's, not the compression's), or None."""
    ratios = m.get("latency_spread", {}).get("batch_64", {})
    if (m.get("runtime") != "onnxruntime" or not m.get("int8_kernels") or "compression_ratio" not in ratios
            or ratios["compression_ratio"] >= 1.0 or not ratios.get("compression_significant", True)
            or slowdown_reason(m)):  # a slower model's note already names it
        return None
    return (f"Faster than the baseline through the runtime only: ONNX Runtime runs the baseline's fp32 export at "
            f"{ratios['runtime_ratio']:.2f}x torch's speed at batch 64 and the int8 graph at "
            f"{ratios['compression_ratio']:.2f}x that: {_int8_cost(m)}. The int8 model's gain here is its size; "
            f"`quantize: {{method: weight, bits: 8}}` stores 8-bit codes as well and runs at the fp32 export's "
            f"speed (decoded to float when loaded).")


def _summary(m: dict[str, Any], name: str) -> list[Block]:
    notes = [note for note in (slowdown_reason(m), int8_slowdown_reason(m), timing_caveat(m)) if note]
    return [Heading(1, f"torchslim report: {name}"),
            Paragraph(f"Runtime `{m['runtime']}`, {m['threads']} thread(s), seed {m['seed']}. Every number of the "
                      "compressed model was measured on the artifact reloaded from disk; metrics on the test split."
                      + (f" Artifact sha256 `{m['artifact_sha256']}`." if "artifact_sha256" in m else "")),
            Table(("", "baseline", "compressed"), tuple(summary_rows(m)), frozenset({1, 2}))] + [
                Paragraph(note) for note in notes]


def _stage_label(rec: dict[str, Any], first: bool) -> str:
    details = [str(rec[k]) for k in ("method",) if k in rec] + ([f"{rec['bits']} bits"] if "bits" in rec else [])
    return f"{'after' if first else '+'} {rec['stage']}" + (f" ({', '.join(details)})" if details else "")


def _plain_bytes(record: dict[str, Any]) -> str:
    return f"{record['size_bytes_no_entropy']:,}" if "size_bytes_no_entropy" in record else DASH


def _stages(m: dict[str, Any], figures: bool) -> list[Block]:
    """Size and metric after each compressing stage and of the shipped artifact, as in Deep Compression's tables."""
    measured = [r for r in m["stages"] if "size_bytes" in r]
    labels = [_stage_label(r, i == 0) for i, r in enumerate(measured)]
    metric = m["metric"]
    rows = [(label, _plain_bytes(r), f"{r['size_bytes']:,}", f"{r['compression_ratio']:.2f}x", f"{r['params']:,}",
             f"{r['nonzero_params']:,}", _pct(r["artifact_val_metric"]), DASH) for label, r in zip(labels, measured)]
    rows.append(("shipped artifact", _plain_bytes(m), f"{m['size_bytes']:,}", f"{m['compression_ratio']:.2f}x",
                 f"{m['params']:,}", f"{m['nonzero_params']:,}", DASH, _pct(m["value"])))
    intro = ("Each stage's model as saved after it and reloaded: bytes on disk before entropy coding (sparse "
             "relative indices and packed codes, no zstd) and as stored (+ entropy coding), ratio of the stored "
             f"bytes against the baseline's uncompressed fp32 file ({m['baseline_size_bytes']:,} bytes, "
             f"{_pct(m['baseline_value'])} test {metric}), validation metric. The last row is the shipped artifact, "
             "measured on the test split (its manifest also records these measurements, hence a few more bytes than "
             "the last stage's).")
    if not measured:
        intro = "No compressing stage ran: the shipped artifact is the trained model."
    blocks: list[Block] = [Heading(2, "Size and metric by stage"), Paragraph(intro),
                           Table(("stage", "bytes before entropy coding", "bytes", "ratio", "params", "nonzero",
                                  f"val {metric}", f"test {metric}"), tuple(rows), frozenset(range(1, 8)))]
    if figures and measured:
        png = stages_png(labels + ["shipped"], [r["size_bytes"] for r in measured] + [m["size_bytes"]],
                         [r["artifact_val_metric"] for r in measured] + [None], m["value"], metric)
        blocks.append(Figure(png, "Bytes on disk (bars) and validation metric (line) after each stage."))
    return blocks


def _fmt_value(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _records(m: dict[str, Any]) -> list[Block]:
    items = []
    for rec in m["stages"]:
        details = ", ".join(f"{k}={_fmt_value(v)}" for k, v in rec.items() if k not in ("stage", "index")
                            and not isinstance(v, (dict, list)))
        items.append(f"stage {rec['index']} **{rec['stage']}**: {details}")
    return [Heading(2, "Stages"), Items(tuple(items))]


def _layers(m: dict[str, Any], figures: bool) -> list[Block]:
    layers = m.get("layers", [])
    if not layers:
        return []
    rows = tuple((r["name"], r["kind"], "x".join(map(str, r["shape"])), f"{r['params']:,}", f"{r['nonzero']:,}",
                  f"{r['nonzero_fraction']:.4f}", str(r["bits"]), r["encoding"],
                  DASH if r["activation_bits"] is None else str(r["activation_bits"])) for r in layers)
    blocks: list[Block] = [
        Heading(2, "Layers"),
        Paragraph("Each weight matrix of the reloaded artifact: density is the nonzero fraction (of the "
                  "decoded weight when quantized); bits are those stored (32: float)."),
        Table(("layer", "kind", "shape", "weights", "nonzero", "density", "bits", "encoding", "act bits"), rows,
              frozenset({3, 4, 5, 6, 8}))]
    if figures:
        png = layers_png([r["name"] for r in layers], [r["nonzero_fraction"] for r in layers],
                         [r["bits"] if r["encoding"] != "float" else None for r in layers])
        blocks.append(Figure(png, "Nonzero fraction of each layer's weight, with its bits when quantized."))
    return blocks


def _sensitivity(m: dict[str, Any], figures: bool) -> list[Block]:
    blocks: list[Block] = []
    metric = m["metric"]
    for rec in m["stages"]:
        if not rec.get("sensitivity"):
            continue
        table = rec["sensitivity"]  # [{layer, sparsity, val_metric (None: that sparsity empties the layer)}]
        sparsities = sorted({row["sparsity"] for row in table})
        curves: dict[str, dict[float, Optional[float]]] = {}
        for row in table:
            curves.setdefault(row["layer"], {})[row["sparsity"]] = row["val_metric"]
        rows = tuple((layer, *(_pct(c.get(s)) for s in sparsities)) for layer, c in curves.items())
        chosen = ", ".join(f"`{o}`" for o in rec.get("sensitivity_overrides", [])) or "none"
        blocks += [Heading(2, f"Sensitivity (stage {rec['index']}, {rec['stage']})"),
                   Paragraph(f"Validation {metric} with one layer alone pruned at each sparsity ({DASH}: that "
                             f"sparsity would empty the layer); unpruned {_pct(rec['sensitivity_baseline'])}. "
                             f"Sparsities chosen from it: {chosen}."),
                   Table(("layer", *(f"{100 * s:g} %" for s in sparsities)), rows,
                         frozenset(range(1, len(sparsities) + 1)))]
        if figures:
            points = {layer: [(s, v) for s, v in sorted(c.items()) if v is not None] for layer, c in curves.items()}
            blocks.append(Figure(sensitivity_png(points, rec["sensitivity_baseline"], metric),
                                 f"Validation {metric} against each layer's sparsity, that layer alone pruned."))
    return blocks


def _constraints(m: dict[str, Any]) -> list[Block]:
    if not m["constraints"]:
        return [Heading(2, "Constraints"), Paragraph("The domain sets no constraints.")]
    rows = tuple((f"`{key}`", str(c["limit"]), f"{c['measured']:.6g}", "met" if c["met"] else "**NOT met**")
                 for key, c in m["constraints"].items())
    return [Heading(2, "Constraints"), Table(("constraint", "limit", "measured", ""), rows, frozenset({1, 2}))]


def _data(m: dict[str, Any]) -> list[Block]:
    d = m["data"]
    return [Heading(2, "Data"),
            Paragraph(f"`{d['source']}`: train {d['train']}, val {d['val']}, test {d['test']} (seed {d['seed']}"
                      f"{', stratified' if d.get('stratified') else ', not stratified: a class has a single sample'}"
                      f"). {d['preprocessing']}.")]


def _runtime(metrics: dict[str, Any]) -> list[Block]:
    kernels = metrics.get("int8_kernels")
    if kernels is None:
        ran = "ONNX Runtime was not used (runtime `torch`)."
    elif kernels:
        ran = "ONNX Runtime ran integer kernels: " + ", ".join(f"{op} ×{n}" for op, n in kernels.items()) + "."
        float_ops = metrics.get("float_ops_in_int8")
        if float_ops:
            ran += (" Between them, in float: " + ", ".join(f"{op} ×{n}" for op, n in float_ops.items())
                    + " (each with a conversion from int8 before it or back to int8 after it).")
        elif float_ops is not None:
            ran += " No float op runs between them."
    else:
        ran = "ONNX Runtime ran float kernels only (the artifact holds no int8 model)."
    threads = metrics.get("ort_threads")
    if threads:
        ran += (f" Timed on {threads['compressed']} intra-op thread(s)"
                + (f", the baseline's fp32 export on {threads['baseline']}" if "baseline" in threads else "")
                + f", each the faster of one and {metrics['threads']} (torch keeps small operators on one thread "
                  "by itself; ONNX Runtime splits each one it can).")
    cpu = metrics.get("cpu_features", {})
    flags = [k for k, v in cpu.items() if v is True]
    return [Heading(2, "Runtime"),
            Paragraph(f"Compressed model measured in `{metrics.get('runtime')}`; baseline in `torch`. {ran}"),
            Paragraph(f"CPU `{cpu.get('machine', '?')}` int8 features: {', '.join(flags) if flags else 'none detected'}.")]


def runtime_markdown(metrics: dict[str, Any]) -> str:
    """A report section saying which kernels ran and what int8 support the CPU has."""
    return to_markdown(_runtime(metrics))


def report_blocks(m: dict[str, Any], name: str, *, figures: bool) -> list[Block]:
    """The whole report; ``figures`` adds the plots (HTML only)."""
    blocks = _summary(m, name) + _stages(m, figures) + _layers(m, figures) + _sensitivity(m, figures)
    blocks += _constraints(m) + _records(m) + _data(m)
    if "cpu_features" in m:
        blocks += _runtime(m)
    return blocks


def render_markdown(m: dict[str, Any], name: str) -> str:
    """``report.md``: the report as Markdown that reads well in a terminal (tables padded, no images).

    Args:
        m: the run's ``metrics.json`` object.
        name: the domain's name, for the title.
    """
    return to_markdown(report_blocks(m, name, figures=False))


def render_html(m: dict[str, Any], name: str) -> str:
    """``report.html``: the same report as one self-contained page, plots embedded as base64 PNGs.

    Without matplotlib (the ``report`` extra) the page says so and shows the tables only.
    """
    figures = plots_available()
    blocks = report_blocks(m, name, figures=figures)
    if not figures:
        blocks.insert(3, Paragraph("Plots need matplotlib: `pip install torchslim[report]`."))
    return to_html(f"torchslim report: {name}", blocks)
