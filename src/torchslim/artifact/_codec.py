"""Per-tensor storage encodings, chosen at save time: whichever candidate stores a tensor in the fewest bytes.

Encodings (recorded per tensor in the manifest, ``entry["encoding"]``):

* ``dense``: the tensor's little-endian bytes.
* ``packed{b}``: a buffer of packed ``b``-bit codes (quantized weights), stored as it is.
* ``sparse``: a float tensor with many zeros, as in Deep Compression: for each nonzero, the number of zeros before
  it (its *gap*) in ``index_bits`` bits, then the nonzero values. A gap that does not fit is split by filler
  entries (gap ``2^index_bits - 1``, value 0).
* ``sparse{b}``: packed ``b``-bit codes stored as entries ``gap | code << index_bits`` of ``index_bits + b`` bits
  (Deep Compression: 4-bit relative index + 4-bit code = one byte), the most frequent code (``fill``) left out.

Each tensor's bytes are then entropy-coded with zstandard (``entry["zstd"]``) when that is smaller; multi-byte
values are split into byte planes first, so the exponent bytes of floats compress. Floats are exact: only values
equal to zero are dropped by ``sparse``, and a decoded zero is ``+0.0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import zstandard

ZSTD_LEVEL = 19
LARGE = 1 << 22  # bytes above which a fast zstd level is used: level 19 runs at a few MB/s


def zstd_compress(data: bytes, dictionary: zstandard.ZstdCompressionDict | None = None, *,
                  level: int = ZSTD_LEVEL) -> bytes:
    """One deterministic zstd frame: fixed level, content size written, no checksum, no dictionary id."""
    return zstandard.ZstdCompressor(level=level, dict_data=dictionary, write_checksum=False,
                                    write_content_size=True, write_dict_id=False).compress(data)


def zstd_decompress(data: bytes, dictionary: zstandard.ZstdCompressionDict | None = None) -> tuple[bytes, bytes]:
    """(content of the first zstd frame in ``data``, the bytes after that frame)."""
    decoder = zstandard.ZstdDecompressor(dict_data=dictionary).decompressobj()
    out = decoder.decompress(data)
    if not decoder.eof:
        raise ValueError("truncated zstd frame")
    return out, decoder.unused_data


# ---- bit and byte layouts -------------------------------------------------------------------------------------

def _pack_bits(values: np.ndarray, width: int) -> bytes:
    """Little-endian bitstream of ``width``-bit unsigned values (value i at bits [i*width, (i+1)*width))."""
    if width in (8, 16, 32):
        return values.astype(f"<u{width // 8}").tobytes()
    if width == 4:
        nibbles = np.append(values.astype(np.uint8), np.zeros(values.size % 2, np.uint8))  # (2 * nbytes,)
        return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()
    bits = np.stack([(values >> b) & 1 for b in range(width)], axis=1).astype(np.uint8)  # (n, width)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def _unpack_bits(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`_pack_bits`: ``count`` values as int64."""
    if len(data) != (count * width + 7) // 8:
        raise ValueError(f"{len(data)} bytes do not hold {count} values of {width} bits")
    raw = np.frombuffer(data, np.uint8)
    if width in (8, 16, 32):
        return raw.view(f"<u{width // 8}").astype(np.int64)
    if width == 4:
        return np.stack([raw & 15, raw >> 4], axis=1).reshape(-1)[:count].astype(np.int64)
    bits = np.unpackbits(raw, bitorder="little")[: count * width].reshape(count, width).astype(np.int64)
    return (bits << np.arange(width, dtype=np.int64)).sum(axis=1)  # (count,)


def _planes(array: np.ndarray) -> bytes:
    """Bytes grouped by significance (all first bytes, all second bytes, ...): floats compress better."""
    raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1, array.itemsize)  # (n, itemsize)
    return raw.T.tobytes()


def _unplanes(data: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    raw = np.frombuffer(data, np.uint8)
    if raw.size != count * dtype.itemsize:
        raise ValueError(f"{raw.size} bytes do not hold {count} values of {dtype}")
    return np.ascontiguousarray(raw.reshape(dtype.itemsize, count).T).view(dtype).reshape(-1)


# ---- gaps (relative indices) ----------------------------------------------------------------------------------

def _entries(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gap per entry, index of the nonzero each entry stores or -1 for a filler) for sorted ``positions``."""
    top = (1 << index_bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1  # zeros before each nonzero
    fillers = gaps // (top + 1)  # each filler covers top zeros and stands on one more
    ends = np.cumsum(fillers + 1) - 1  # entry index of each real nonzero
    entry_gaps = np.full(int(ends[-1]) + 1 if len(ends) else 0, top, dtype=np.int64)
    entry_gaps[ends] = gaps % (top + 1)
    owner = np.full(entry_gaps.size, -1, dtype=np.int64)
    owner[ends] = np.arange(positions.size)
    return entry_gaps, owner


def _positions(gaps: np.ndarray, numel: int) -> np.ndarray:
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if positions.size and positions[-1] >= numel:
        raise ValueError("sparse indices run past the end of the tensor")
    return positions


# ---- candidates -----------------------------------------------------------------------------------------------

_NP = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16, torch.uint8: np.uint8,
       torch.int8: np.int8, torch.int16: np.int16, torch.int32: np.int32, torch.int64: np.int64,
       torch.bool: np.bool_}


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: its bytes, as int16
        return t.view(torch.int16).numpy().reshape(-1)
    return t.numpy().reshape(-1)


def _dense(flat: np.ndarray) -> tuple[dict[str, Any], bytes, bytes]:
    return {}, flat.tobytes(), _planes(flat)


def _sparse_floats(flat: np.ndarray, index_bits: int) -> tuple[dict[str, Any], bytes, bytes] | None:
    positions = np.flatnonzero(flat != 0)
    gaps, owner = _entries(positions, index_bits)
    values = np.zeros(gaps.size, flat.dtype)
    values[owner >= 0] = flat[positions]
    head = _pack_bits(gaps, index_bits)
    entry = {"index_bits": index_bits, "entries": int(gaps.size)}
    return entry, head + values.tobytes(), head + _planes(values)


def _sparse_codes(codes: np.ndarray, bits: int, index_bits: int) -> tuple[dict[str, Any], bytes, bytes]:
    fill = int(np.bincount(codes, minlength=2 ** bits).argmax())
    positions = np.flatnonzero(codes != fill)
    gaps, owner = _entries(positions, index_bits)
    values = np.full(gaps.size, fill, np.int64)
    values[owner >= 0] = codes[positions]
    data = _pack_bits(gaps | (values << index_bits), index_bits + bits)
    entry = {"index_bits": index_bits, "entries": int(gaps.size), "numel": int(codes.size)}
    if fill:
        entry["fill"] = fill
    return entry, data, data


def _candidates(t: torch.Tensor, packed: tuple[int, int] | None):
    """(encoding, extra entry keys, plain bytes, bytes to entropy-code) of every way ``t`` may be stored."""
    flat = _numpy(t)
    if packed is not None:
        from torchslim.quantize.packing import unpack

        bits, numel = packed
        yield (f"packed{bits}", *_dense(flat))
        codes = unpack(t, bits, numel).numpy()
        for index_bits in (8 - bits, 16 - bits):  # byte-aligned entries: zstd sees whole symbols
            if index_bits >= 1:
                yield (f"sparse{bits}", *_sparse_codes(codes, bits, index_bits))
        return
    yield ("dense", *_dense(flat))
    if t.is_floating_point() and flat.size and np.count_nonzero(flat) <= 0.5 * flat.size:
        for index_bits in (4, 8, 16):
            yield ("sparse", *_sparse_floats(flat, index_bits))


def encode_tensor(t: torch.Tensor, packed: tuple[int, int] | None = None, *,
                  compress: bool = True, entropy: bool = True, fast: bool = False
                  ) -> tuple[dict[str, Any], bytes, bytes]:
    """The smallest stored form of ``t``, verified to decode back to it.

    Args:
        t: a contiguous CPU tensor of the state dict.
        packed: ``(bits, numel)`` when ``t`` is a buffer of packed codes (sparse code entries are then tried).
        compress: False stores the tensor as it is (dense, or its packed codes), with no sparse or entropy coding.
        entropy: False leaves out the zstd candidates (the encodings alone, for a before/after comparison).
        fast: entropy-code at zstd's fast level even for small tensors (a model of many megabytes: level 19 runs
            at a few MB/s and gains a few percent).
    Returns:
        (manifest entry: encoding, its parameters, and ``zstd`` when entropy-coded; the stored bytes; the bytes
        before entropy coding, for a payload compressed as a whole).
    """
    if not compress:
        raw = _numpy(t).tobytes()
        return {"encoding": "dense" if packed is None else f"packed{packed[0]}"}, raw, raw
    best: tuple[dict[str, Any], bytes, bytes] | None = None
    for encoding, extra, plain, planed in _candidates(t, packed):
        level = ZSTD_LEVEL if len(planed) < LARGE and not fast else 3
        options = [({"encoding": encoding, **extra}, plain, plain)]
        if entropy:
            options.append(({"encoding": encoding, **extra, "zstd": True}, zstd_compress(planed, level=level), planed))
        for entry, data, before in options:
            if best is None or len(data) < len(best[1]):
                best = (entry, data, before)
    entry, data, before = best
    if entry["encoding"] != "dense" and not _decodes_to(entry, data, t):  # never store what does not round-trip
        return encode_tensor(t, packed, compress=False)
    return entry, data, before


def _decodes_to(entry: dict[str, Any], data: bytes, t: torch.Tensor) -> bool:
    try:
        decoded = decode_tensor({**entry, "shape": list(t.shape), "dtype": dtype_name(t.dtype)}, data)
    except ValueError:
        return False
    return decoded.shape == t.shape and torch.equal(decoded, t)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def decode_tensor(entry: dict[str, Any], data: bytes, *, inflated: bool = False) -> torch.Tensor:
    """Inverse of :func:`encode_tensor`: the tensor an entry (with ``shape`` and ``dtype``) and its bytes hold.

    Args:
        inflated: the bytes were already decompressed (the payload was entropy-coded as a whole).

    Raises:
        ValueError: the bytes do not hold what the entry describes.
    """
    dtype = _torch_dtype(entry["dtype"])
    shape = [int(s) for s in entry["shape"]]
    numel = int(np.prod(shape, dtype=np.int64))
    np_dtype = np.dtype(np.int16 if dtype == torch.bfloat16 else _NP[dtype])
    encoding = str(entry["encoding"])
    planed = bool(entry.get("zstd"))
    if planed and not inflated:
        data, rest = zstd_decompress(data)
        if rest:
            raise ValueError("bytes after the zstd frame")
    if encoding == "dense" or (encoding.startswith("packed") and encoding[6:].isdigit()):
        flat = _unplanes(data, np_dtype, numel) if planed else _frombuffer(data, np_dtype, numel)
    elif encoding == "sparse":
        index_bits, count = int(entry["index_bits"]), int(entry["entries"])
        head = (count * index_bits + 7) // 8
        positions = _positions(_unpack_bits(data[:head], index_bits, count), numel)
        values = (_unplanes(data[head:], np_dtype, count) if planed
                  else _frombuffer(data[head:], np_dtype, count))
        flat = np.zeros(numel, np_dtype)
        flat[positions] = values
    elif encoding.startswith("sparse") and encoding[6:].isdigit():
        flat = _decode_sparse_codes(entry, data, int(encoding[6:]), numel)
    else:
        raise ValueError(f"unknown tensor encoding {encoding!r}")
    out = torch.from_numpy(flat.copy()).reshape(shape)
    return out.view(torch.bfloat16) if dtype == torch.bfloat16 else out


def _frombuffer(data: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{len(data)} bytes do not hold {count} values of {dtype}")
    return np.frombuffer(data, dtype)


def _decode_sparse_codes(entry: dict[str, Any], data: bytes, bits: int, numel: int) -> np.ndarray:
    from torchslim.quantize.packing import pack

    index_bits, count, codes_n = int(entry["index_bits"]), int(entry["entries"]), int(entry["numel"])
    packed = _unpack_bits(data, index_bits + bits, count)
    positions = _positions(packed & ((1 << index_bits) - 1), codes_n)
    codes = np.full(codes_n, int(entry.get("fill", 0)), np.uint8)
    codes[positions] = (packed >> index_bits).astype(np.uint8)
    flat = pack(torch.from_numpy(codes), bits).numpy()
    if flat.size != numel:
        raise ValueError(f"{codes_n} codes of {bits} bits do not fill {numel} bytes")
    return flat
