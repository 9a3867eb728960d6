"""Per-tensor encodings: exact round trips, Deep Compression's relative indices, and the bytes each one takes."""

import numpy as np
import pytest
import torch

from torchslim.artifact._codec import _entries, _positions, decode_tensor, dtype_name, encode_tensor
from torchslim.quantize.packing import pack


def _round_trip(t, packed=None):
    entry, stored, before = encode_tensor(t.contiguous(), packed)
    full = {**entry, "shape": list(t.shape), "dtype": dtype_name(t.dtype)}
    # inflated: the bytes as read from a payload that was entropy-coded as a whole
    for decoded in (decode_tensor(full, stored), decode_tensor(full, before, inflated=True)):
        torch.testing.assert_close(decoded, t, rtol=0, atol=0, equal_nan=True)
    assert encode_tensor(t.contiguous(), packed) == (entry, stored, before)  # deterministic
    return entry, stored


def _sparse_float(shape, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)


@pytest.mark.parametrize("t", [
    torch.randn(7, 5, generator=torch.Generator().manual_seed(1)),
    torch.randn(4).to(torch.bfloat16), torch.randn(4).half(), torch.arange(9), torch.tensor([True, False, True]),
    torch.zeros(0), torch.tensor(3.5), -torch.zeros(50), torch.tensor([float("nan"), 0.0, 0.0, 0.0, 1.0]),
])
def test_every_dtype_round_trips_exactly(t):
    _round_trip(t)


def test_relative_indices_insert_filler_zeros_when_a_gap_overflows():
    # 4-bit gaps: 100 zeros before the first nonzero -> six fillers (gap 15, each standing on a zero) and gap 4;
    # 38 zeros between 101 and 140 -> two fillers and gap 6
    gaps, owner = _entries(np.array([100, 101, 140]), 4)
    assert gaps.tolist() == [15] * 6 + [4, 0, 15, 15, 6]
    assert owner.tolist() == [-1] * 6 + [0, 1, -1, -1, 2]
    assert _positions(gaps, 141)[owner >= 0].tolist() == [100, 101, 140]
    with pytest.raises(ValueError, match="past the end"):
        _positions(gaps, 140)


def test_sparse_float_weights_store_gaps_and_values_only():
    t = _sparse_float((300, 100), 0.05)
    entry, stored = _round_trip(t)
    nonzero = int(torch.count_nonzero(t))
    assert entry["encoding"] == "sparse" and entry["entries"] >= nonzero
    assert len(stored) < nonzero * 5.2  # 4 bytes of fp32 value + about a byte of index (dense: 120,000 bytes)


def test_sparse_codes_are_deep_compression_entries():
    """95% of 4-bit codes at 0: one byte per entry (4-bit relative index + 4-bit code), then zstd."""
    g = torch.Generator().manual_seed(0)
    codes = (torch.rand(100, 300, generator=g) < 0.05) * torch.randint(1, 16, (100, 300), generator=g)
    packed = pack(codes, 4)  # 15,000 bytes
    entry, stored = _round_trip(packed, (4, codes.numel()))
    nonzero = int(torch.count_nonzero(codes))
    assert entry["encoding"] == "sparse4" and entry["index_bits"] == 4 and entry["numel"] == 30000
    assert nonzero <= entry["entries"] < 2 * nonzero  # fillers where a gap passes 15 (the mean gap is 19)
    # < 10.4 bits per nonzero; the entropy is 9.6 (uniform code: 3.9 bits, geometric gap at 5%: 5.7 bits)
    assert len(stored) < 1.3 * nonzero


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packed_codes_round_trip_dense_or_sparse(bits):
    g = torch.Generator().manual_seed(bits)
    dense = torch.randint(0, 2 ** bits, (33, 7), generator=g)
    entry, _ = _round_trip(pack(dense, bits), (bits, dense.numel()))
    assert entry["encoding"] == f"packed{bits}"  # uniform codes: nothing to gain from sparse entries
    sparse = dense * (torch.rand(33, 7, generator=g) < 0.1)
    entry, _ = _round_trip(pack(sparse, bits), (bits, sparse.numel()))
    assert entry["encoding"] in (f"packed{bits}", f"sparse{bits}")


def test_most_frequent_code_is_the_fill():
    """Affine codes of pruned weights sit at the zero point, not at 0: that code is left out."""
    codes = torch.full((2000,), 7)
    codes[::50] = 3
    entry, _ = _round_trip(pack(codes, 4), (4, 2000))
    assert entry["encoding"] == "sparse4" and entry["fill"] == 7


def test_dense_floats_are_entropy_coded_by_byte_planes():
    t = torch.rand(20000, generator=torch.Generator().manual_seed(0)) * 0.1  # exponent bytes repeat
    entry, stored = _round_trip(t)
    assert entry == {"encoding": "dense", "zstd": True} and len(stored) < 0.9 * 80000


def test_without_entropy_coding_the_encodings_stay_and_zstd_goes():
    """The report's "before entropy coding" size: same sparse entries, no zstd frame."""
    g = torch.Generator().manual_seed(0)
    codes = (torch.rand(100, 300, generator=g) < 0.05) * torch.randint(1, 16, (100, 300), generator=g)
    packed = pack(codes, 4)
    coded, coded_bytes, _ = encode_tensor(packed, (4, codes.numel()))
    plain, plain_bytes, _ = encode_tensor(packed, (4, codes.numel()), entropy=False)
    assert coded["zstd"] and "zstd" not in plain
    assert plain["encoding"] == coded["encoding"] == "sparse4" and plain["entries"] == coded["entries"]
    assert len(plain_bytes) == plain["entries"]  # one byte per entry: 4-bit relative index + 4-bit code
    assert len(coded_bytes) < 0.95 * len(plain_bytes)
    decoded = decode_tensor({**plain, "shape": [packed.numel()], "dtype": "uint8"}, plain_bytes)
    assert torch.equal(decoded, packed)


def test_damaged_bytes_raise_value_error():
    t = _sparse_float((50, 40), 0.1)
    entry, stored = encode_tensor(t)[:2]
    full = {**entry, "shape": [50, 40], "dtype": "float32"}
    with pytest.raises(ValueError):
        decode_tensor(full, stored[:-3])
    with pytest.raises(ValueError):
        decode_tensor({**full, "encoding": "sparse9x"}, stored)
