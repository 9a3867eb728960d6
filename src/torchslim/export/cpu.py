"""What int8 acceleration the CPU offers (VNNI, AVX-512, AMX)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

_FLAGS = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "avx512_vnni": ("avx512_vnni",),
    "avx_vnni": ("avx_vnni",),
    "amx_int8": ("amx_int8",),
    "arm_dotprod": ("asimddp",),
    "arm_i8mm": ("i8mm",),
}


def cpu_int8_features(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, bool | str]:
    """Report the CPU's int8 dot-product features, which decide how fast ORT's int8 kernels are.

    Reads the ``flags`` (x86) or ``Features`` (ARM) line of /proc/cpuinfo; where that file is missing
    (macOS, Windows) every feature is reported False and ``source`` says so.

    Args:
        cpuinfo: path of the cpuinfo file (for tests).
    Returns:
        {"machine": ..., "source": path or "unavailable", "avx2": bool, "avx512": bool, "avx512_vnni": bool,
         "avx_vnni": bool, "amx_int8": bool, "arm_dotprod": bool, "arm_i8mm": bool, "vnni": bool}
    """
    flags: set[str] = set()
    source = "unavailable"
    try:
        text = Path(cpuinfo).read_text(errors="replace")
        source = str(cpuinfo)
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                flags.update(value.split())
    except OSError:
        pass
    report: dict[str, bool | str] = {"machine": platform.machine(), "source": source}
    for name, needed in _FLAGS.items():
        report[name] = all(f in flags for f in needed)
    report["vnni"] = bool(report["avx512_vnni"] or report["avx_vnni"])
    return report


def int8_products_saturate(report: dict[str, bool | str] | None = None) -> bool:
    """Whether ONNX Runtime's int8 products can overflow on this CPU with full-range 8-bit weights.

    Without VNNI, x86 int8 kernels (AVX2, AVX-512BW) add pairs of uint8 × int8 products into int16 first
    (``vpmaddubsw``), which saturates once two products exceed 32,767: 255 · 127 · 2 does, 255 · 64 · 2 does
    not. Weights quantized to [-64, 64] (``reduce_range``) cannot overflow. Measured: a d 256, 4-layer encoder,
    dynamic int8 on an AVX2 CPU, lost 1.67 accuracy points with 8-bit weights and none with 7-bit ones.
    VNNI (and AMX) multiply-accumulate into int32; ARM's kernels widen before adding.

    Args:
        report: :func:`cpu_int8_features`' report (this machine's when None).
    """
    report = _this_cpu() if report is None else report
    return bool(report["avx2"] or report["avx512"]) and not report["vnni"]


@functools.lru_cache(maxsize=1)
def _this_cpu() -> dict[str, bool | str]:
    """This machine's report, read once: every int8 stage and every int8 session asks."""
    return cpu_int8_features()


def weights_reduce_range(setting: bool | str) -> bool:
    """A ``reduce_range`` setting resolved: true or false as given; ``"auto"``: whether this CPU's int8 products
    would overflow with full 8-bit weights (:func:`int8_products_saturate`)."""
    return int8_products_saturate() if setting == "auto" else bool(setting)
