"""The human-readable report: baseline against compressed, stage by stage, constraints met or not."""

from __future__ import annotations

from typing import Any


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def summary_rows(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(quantity, baseline, compressed) rows shared by the terminal summary and the report."""
    pct = lambda v: f"{100 * v:.2f} %"  # noqa: E731
    return [
        (m["metric"], pct(m["baseline_value"]), pct(m["value"])),
        ("size on disk", _fmt_bytes(m["baseline_size_bytes"]), _fmt_bytes(m["size_bytes"])),
        ("compression ratio", "1.00x", f"{m['compression_ratio']:.2f}x"),
        ("params", f"{m['baseline_params']:,}", f"{m['params']:,}"),
        ("nonzero params", "", f"{m['nonzero_params']:,}"),
        ("latency batch 1", f"{m['baseline_latency_ms']['batch_1']:.3f} ms", f"{m['latency_ms']['batch_1']:.3f} ms"),
        ("latency batch 64", f"{m['baseline_latency_ms']['batch_64']:.3f} ms",
         f"{m['latency_ms']['batch_64']:.3f} ms ({m['latency_ratio_batch_64']:.2f}x faster)"),
        ("peak memory (batch 64)", _fmt_bytes(m["baseline_peak_memory_bytes"]), _fmt_bytes(m["peak_memory_bytes"])),
    ]


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


def render_markdown(m: dict[str, Any], name: str) -> str:
    lines = [f"# torchslim report: {name}", "",
             f"Runtime `{m['runtime']}`, {m['threads']} thread(s), seed {m['seed']}. Every number of the compressed "
             "model was measured on the artifact reloaded from disk; metrics on the test split.", "",
             "| | baseline | compressed |", "|---|---:|---:|"]
    lines += [f"| {q} | {b} | {c} |" for q, b, c in summary_rows(m)]
    lines += ["", "## Stages", ""]
    for rec in m["stages"]:
        details = ", ".join(f"{k}={v}" for k, v in rec.items() if k not in ("stage", "index")
                            and not isinstance(v, (dict, list)))
        lines.append(f"{rec['index']}. **{rec['stage']}**: {details}")
    lines += ["", "## Constraints", ""]
    if not m["constraints"]:
        lines.append("The domain sets no constraints.")
    for key, c in m["constraints"].items():
        lines.append(f"- `{key}`: limit {c['limit']}, measured {c['measured']:.6g}: "
                     f"**{'met' if c['met'] else 'NOT met'}**")
    d = m["data"]
    lines += ["", "## Data", "",
              f"`{d['source']}`: train {d['train']}, val {d['val']}, test {d['test']} (seed {d['seed']}, "
              f"stratified). {d['preprocessing']}.", ""]
    if "cpu_features" in m:
        lines += ["", runtime_markdown(m)]
    return "\n".join(lines)
