"""Observers: estimate an activation's quantization range [lo, hi] from calibration batches.

minmax: the extreme values seen. percentile: the p-th / (100-p)-th percentiles (clips rare outliers).
mse: searches shrunk ranges alpha·[min, max] and keeps the one with the lowest quantization MSE.
Every range contains 0, as the affine maths requires.
"""

from __future__ import annotations

from typing import Callable

import torch

from torchslim._errors import ConfigError
from torchslim.quantize.primitives import check_bits, check_finite, qparams_from_range, quantize_codes

# Percentile and MSE keep a bounded, deterministic sample of the values they see.
MAX_SAMPLES = 1 << 18


class MinMaxObserver:
    """Running minimum and maximum."""

    def __init__(self, bits: int = 8):
        self.bits = check_bits(bits)
        self.lo: float | None = None
        self.hi: float | None = None

    def observe(self, x: torch.Tensor) -> None:
        """Fold one batch of values into the running range."""
        check_finite(x, "calibration data")
        if x.numel() == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)

    def range(self) -> tuple[float, float]:
        """The (lo, hi) range, widened to contain 0."""
        if self.lo is None:
            raise ConfigError("calibration", "no calibration data was observed")
        return min(self.lo, 0.0), max(self.hi, 0.0)


class _SamplingObserver:
    """Keeps at most MAX_SAMPLES values, taking every k-th one (deterministic)."""

    def __init__(self, bits: int):
        self.bits = check_bits(bits)
        self._chunks: list[torch.Tensor] = []
        self._count = 0

    def observe(self, x: torch.Tensor) -> None:
        check_finite(x, "calibration data")
        flat = x.detach().reshape(-1).float().cpu()
        if flat.numel() > MAX_SAMPLES:
            flat = flat[:: -(-flat.numel() // MAX_SAMPLES)]
        self._chunks.append(flat)
        self._count += flat.numel()
        if self._count > 2 * MAX_SAMPLES:
            merged = torch.cat(self._chunks)[::2]
            self._chunks, self._count = [merged], merged.numel()

    def _sample(self) -> torch.Tensor:
        if not self._count:
            raise ConfigError("calibration", "no calibration data was observed")
        return torch.cat(self._chunks)


class PercentileObserver(_SamplingObserver):
    """Range between the (100 - p)-th and p-th percentiles of the observed values."""

    def __init__(self, bits: int = 8, percentile: float = 99.99):
        super().__init__(bits)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError("calibration.percentile", f"must be in (50, 100], got {percentile!r}")
        self.percentile = percentile

    def range(self) -> tuple[float, float]:
        sample = self._sample().double()
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=torch.float64)
        lo, hi = torch.quantile(sample, q).tolist()
        return min(lo, 0.0), max(hi, 0.0)


class MSEObserver(_SamplingObserver):
    """Range alpha·[min, max], alpha in a grid over (0, 1], minimising the quantize→dequantize MSE."""

    def __init__(self, bits: int = 8, steps: int = 64):
        super().__init__(bits)
        self.steps = steps

    def range(self) -> tuple[float, float]:
        sample = self._sample()  # (S,)
        lo, hi = min(float(sample.min()), 0.0), max(float(sample.max()), 0.0)
        alphas = torch.linspace(1.0 / self.steps, 1.0, self.steps)  # (A,)
        scale, zp = qparams_from_range(alphas * lo, alphas * hi, self.bits)  # (A,)
        q = quantize_codes(sample[None, :], scale[:, None], zp[:, None], self.bits)  # (A, S)
        mse = ((q - zp[:, None]) * scale[:, None] - sample[None, :]).pow(2).mean(dim=1)
        best = float(alphas[int(torch.argmin(mse))])
        return best * lo, best * hi


OBSERVERS: dict[str, Callable[..., object]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}


def make_observer(name: str, bits: int = 8, **options):
    """Build an observer by its recipe name (``calibration.observer``).

    Args:
        name: minmax, percentile or mse.
        bits: bit width the range is for (used by mse).
        options: observer-specific settings (percentile=...).
    Returns:
        An object with ``observe(tensor)`` and ``range() -> (lo, hi)``.
    """
    if name not in OBSERVERS:
        raise ConfigError("calibration.observer", f"unknown observer {name!r}; known: {sorted(OBSERVERS)}")
    return OBSERVERS[name](bits, **options)
