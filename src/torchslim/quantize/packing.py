"""Bit packing: store b-bit codes as a dense little-endian bitstream in uint8 bytes.

For b = 8 this is the identity; b = 4 puts two codes in a byte, b = 2 four; b = 3, 5, 6, 7 codes
straddle byte boundaries. Code i occupies bits [i*b, (i+1)*b) of the stream, least significant first.
"""

from __future__ import annotations

import torch

from torchslim.quantize.primitives import check_bits


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes needed to hold ``numel`` codes of ``bits`` bits."""
    return (numel * bits + 7) // 8


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2^bits - 1] into a 1-D uint8 tensor of ceil(numel*bits/8) bytes.

    Args:
        q: integer (or integral float) tensor of any shape; flattened in row-major order.
        bits: 2..8.
    Returns:
        uint8 tensor (packed_nbytes(q.numel(), bits),).
    """
    check_bits(bits)
    flat = q.reshape(-1)
    if flat.is_floating_point():
        flat = flat.round()
    flat = flat.to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2 ** bits):
        raise ValueError(f"codes must lie in [0, {2 ** bits - 1}] to pack into {bits} bits")
    if bits == 8:
        return flat.to(torch.uint8).clone()
    shifts = torch.arange(bits, device=flat.device, dtype=torch.int32)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)  # (numel * bits,) bits, LSB first
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).reshape(-1, 8)  # (nbytes, 8)
    weights = 1 << torch.arange(8, device=flat.device, dtype=torch.int32)
    return (stream * weights).sum(dim=1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``numel`` codes as a 1-D uint8 tensor."""
    check_bits(bits)
    if packed.numel() < packed_nbytes(numel, bits):
        raise ValueError(f"{packed.numel()} bytes cannot hold {numel} codes of {bits} bits")
    if bits == 8:
        return packed.reshape(-1)[:numel].clone()
    if 8 % bits == 0:  # 2 and 4 bits: whole codes per byte, one shift per code slot
        slots = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
        codes = (packed.reshape(-1)[:, None] >> slots) & (2 ** bits - 1)  # (nbytes, 8 / bits)
        return codes.reshape(-1)[:numel].contiguous()
    shifts = torch.arange(8, device=packed.device, dtype=torch.int32)
    stream = ((packed.reshape(-1).to(torch.int32)[:, None] >> shifts) & 1).reshape(-1)
    codes = stream[: numel * bits].reshape(numel, bits)  # (numel, bits), LSB first
    weights = 1 << torch.arange(bits, device=packed.device, dtype=torch.int32)
    return (codes * weights).sum(dim=1).to(torch.uint8)
