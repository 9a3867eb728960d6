import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchslim._errors import ConfigError
from torchslim.quantize import PerChannel, PerGroup, PerTensor, quantize_tensor, sqnr_db
from torchslim.quantize.primitives import fake_quantize_tensor


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=64),
       bits=st.integers(2, 8), symmetric=st.booleans())
def test_round_trip_error_at_most_half_a_step(values, bits, symmetric):
    x = torch.tensor(values, dtype=torch.float32)
    qt = quantize_tensor(x, bits, PerTensor(), symmetric)
    err = (qt.dequantize() - x).abs()
    assert qt.codes.dtype == torch.uint8 and int(qt.codes.max()) <= 2 ** bits - 1
    assert float(err.max()) <= float(qt.scale[0]) / 2 * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel(0), PerChannel(1), PerGroup(8)])
def test_round_trip_error_per_block(granularity):
    torch.manual_seed(0)
    w = torch.randn(16, 32) * torch.logspace(-2, 1, 16)[:, None]
    qt = quantize_tensor(w, 4, granularity)
    from torchslim.quantize.granularity import from_blocks, to_blocks
    bound = from_blocks(qt.scale[:, None].expand_as(to_blocks(w, granularity)) / 2, w.shape, granularity)
    assert bool(((qt.dequantize() - w).abs() <= bound * (1 + 1e-5) + 1e-7).all())


def test_sqnr_8bit_per_channel_linear_256():
    torch.manual_seed(0)
    w = torch.nn.Linear(256, 256).weight.detach()
    sqnr = sqnr_db(w, quantize_tensor(w, 8, PerChannel()).dequantize())
    assert sqnr >= 35.0, sqnr


def test_per_channel_beats_per_tensor_with_outlier_channel():
    torch.manual_seed(0)
    w = torch.randn(64, 128) * 0.02
    w[3] *= 100  # one outlier channel stretches the per-tensor range
    per_tensor = sqnr_db(w, quantize_tensor(w, 8, PerTensor()).dequantize())
    per_channel = sqnr_db(w, quantize_tensor(w, 8, PerChannel()).dequantize())
    assert per_channel > per_tensor + 10, (per_channel, per_tensor)


@pytest.mark.parametrize("symmetric", [False, True])
def test_constant_and_zero_tensors(symmetric):
    for value in (0.0, 3.5, -2.0):
        x = torch.full((7, 5), value)
        qt = quantize_tensor(x, 4, PerChannel(), symmetric)
        assert torch.isfinite(qt.scale).all()
        assert torch.allclose(qt.dequantize(), x, atol=float(qt.scale.max()) / 2 + 1e-6)
    assert torch.equal(quantize_tensor(torch.zeros(9), 3, PerTensor(), symmetric).dequantize(), torch.zeros(9))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_zeros_stay_exactly_zero(bits):
    torch.manual_seed(0)
    w = torch.randn(32, 64) + 0.5
    w[torch.rand_like(w) < 0.5] = 0.0  # pruned
    deq = quantize_tensor(w, bits, PerChannel()).dequantize()
    assert bool((deq[w == 0] == 0).all())


def test_more_bits_less_error():
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    errors = [sqnr_db(w, quantize_tensor(w, b, PerChannel()).dequantize()) for b in range(2, 9)]
    assert all(b > a for a, b in zip(errors, errors[1:]))
    # ~6 dB per bit, as uniform quantization predicts
    assert 5.0 < (errors[-1] - errors[2]) / 4 < 7.0


@pytest.mark.parametrize("bits", [1, 9, 0, 16, 4.0])
def test_bad_bits_raise_config_error(bits):
    with pytest.raises(ConfigError) as err:
        quantize_tensor(torch.randn(4, 4), bits)
    assert err.value.field == "bits"


def test_group_size_must_divide():
    with pytest.raises(ConfigError) as err:
        quantize_tensor(torch.randn(4, 30), 4, PerGroup(8))
    assert err.value.field == "group_size"
    with pytest.raises(ConfigError) as err:
        PerGroup(0)
    assert err.value.field == "group_size"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_raise(bad):
    w = torch.randn(4, 4)
    w[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_tensor(w, 8)


def test_fake_quantize_straight_through_gradient():
    torch.manual_seed(0)
    w = torch.randn(8, 16, requires_grad=True)
    out = fake_quantize_tensor(w, 4, PerChannel())
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    assert torch.allclose(out, quantize_tensor(w.detach(), 4, PerChannel()).dequantize(), atol=1e-6)
