"""Affine quantization maths: scale and zero point, quantize, dequantize, fake quantize, SQNR.

Codes are unsigned integers in [0, 2^bits - 1] for both variants, so one packing format serves all:
  asymmetric: scale = (max - min) / (2^b - 1), zero_point = round(-min / scale)
  symmetric:  scale = max|x| / (2^(b-1) - 1),  zero_point = 2^(b-1)
  symmetric, reduce_range: scale = max|x| / 2^(b-2) (codes within zero_point ± 2^(b-2), ONNX Runtime's
              ``reduce_range``: int8 weights in [-64, 64], whose products cannot overflow int16 pair sums)
  q = clamp(round(x / scale) + zero_point, 0, 2^b - 1),  x ≈ (q - zero_point) * scale
The range always contains 0 (min <= 0 <= max), so 0 maps to the code zero_point exactly and
pruned weights stay exactly zero after a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchslim._errors import ConfigError
from torchslim.quantize.granularity import Granularity, PerTensor, from_blocks, to_blocks

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: int, field: str = "bits") -> int:
    """Reject bit widths outside 2..8 with a ConfigError naming ``field``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(field, f"must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return bits


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ValueError when ``x`` holds NaN or Inf: such ranges give meaningless scales."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or Inf; cannot compute a quantization range")


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool = False,
                       reduce_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for ranges [lo, hi] (any matching shapes).

    Args:
        lo, hi: range bounds; widened to contain 0.
        bits: 2..8.
        symmetric: zero point fixed at 2^(bits-1), range ±max|x|.
        reduce_range: (symmetric only) half the codes: ±max|x| maps to zero_point ± 2^(bits-2).
    Returns:
        (scale float32, zero_point float32 holding integers), shaped like ``lo``.
    """
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    qmax = 2 ** bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        scale = torch.maximum(-lo, hi) / (half // 2 if reduce_range else half - 1)
        # an all-zero tensor has max = min = 0: any positive scale represents it exactly
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.full_like(scale, float(half))
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero_point


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """q = clamp(round(x / scale) + zero_point, 0, 2^bits - 1) as float (broadcasting shapes)."""
    return torch.clamp(torch.round(x / scale) + zero_point, 0, 2 ** bits - 1)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize then dequantize, with a straight-through gradient where x is not clamped (0 where it is)."""
    q = quantize_codes(x, scale, zero_point, bits)
    xq = (q - zero_point) * scale
    # values within half a step beyond the grid's ends round onto it rather than being clamped
    inside = (x >= (-0.5 - zero_point) * scale) & (x <= (2 ** bits - 0.5 - zero_point) * scale)
    return torch.where(inside, x + (xq - x).detach(), xq.detach())


@dataclass
class QTensor:
    """A quantized tensor: unsigned codes plus per-block scale and zero point.

    codes: uint8, the original shape; scale/zero_point: (blocks,) float32 — see granularity.to_blocks.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    granularity: Granularity

    def dequantize(self) -> torch.Tensor:
        """x ≈ (q - zero_point) * scale, float32 in the original shape."""
        blocks = to_blocks(self.codes, self.granularity).float()  # (B, L)
        x = (blocks - self.zero_point[:, None]) * self.scale[:, None]
        return from_blocks(x, self.codes.shape, self.granularity)


def block_qparams(x: torch.Tensor, bits: int, granularity: Granularity = PerTensor(), symmetric: bool = False,
                  reduce_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scale and zero point for each block of ``x``. Returns two (blocks,) tensors."""
    check_bits(bits)
    check_finite(x, "tensor")
    blocks = to_blocks(x.detach(), granularity).float()  # (B, L)
    return qparams_from_range(blocks.amin(dim=1), blocks.amax(dim=1), bits, symmetric, reduce_range)


def quantize_tensor(x: torch.Tensor, bits: int, granularity: Granularity = PerTensor(), symmetric: bool = False,
                    reduce_range: bool = False) -> QTensor:
    """Quantize ``x`` with min/max ranges per block.

    Args:
        x: float tensor, e.g. a Linear weight (out, in) or Conv weight (out, in, kh, kw).
        bits: 2..8.
        granularity: PerTensor(), PerChannel(axis) or PerGroup(size).
        symmetric: use the symmetric variant.
        reduce_range: (symmetric) codes within zero_point ± 2^(bits-2), see the module docstring.
    Returns:
        QTensor whose dequantize() differs from x by at most scale / 2 per element.
    """
    scale, zero_point = block_qparams(x, bits, granularity, symmetric, reduce_range)
    blocks = to_blocks(x.detach(), granularity).float()
    q = quantize_codes(blocks, scale[:, None], zero_point[:, None], bits).to(torch.uint8)
    return QTensor(from_blocks(q, x.shape, granularity), scale, zero_point, bits, granularity)


def fake_quantize_tensor(x: torch.Tensor, bits: int, granularity: Granularity = PerTensor(),
                         symmetric: bool = False, reduce_range: bool = False) -> torch.Tensor:
    """Differentiable quantize→dequantize of ``x`` with its own min/max ranges (straight-through)."""
    scale, zero_point = block_qparams(x, bits, granularity, symmetric, reduce_range)
    blocks = to_blocks(x, granularity)
    out = fake_quantize(blocks, scale[:, None], zero_point[:, None], bits)
    return from_blocks(out, x.shape, granularity)


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σx² / Σ(x - x̂)²) in dB (inf when exact)."""
    noise = (reference.double() - approximation.double()).pow(2).sum()
    signal = reference.double().pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))
