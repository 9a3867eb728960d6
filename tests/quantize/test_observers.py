import pytest
import torch

from torchslim._errors import ConfigError
from torchslim.quantize import CalibrationConfig, StaticConfig, make_observer, quantize_
from torchslim.quantize.primitives import qparams_from_range, quantize_codes


def _mse(x, lo, hi, bits):
    scale, zp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits)
    return float((((quantize_codes(x, scale, zp, bits) - zp) * scale) - x).pow(2).mean())


def _heavy_tailed(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) ** 3  # cubed normal: long tails


def test_minmax_covers_everything_and_zero():
    obs = make_observer("minmax")
    obs.observe(torch.tensor([1.0, 2.0]))
    obs.observe(torch.tensor([3.0, 0.5]))
    assert obs.range() == (0.0, 3.0)


def test_percentile_clips_outliers():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(0))
    x[0] = 100.0
    obs = make_observer("percentile", percentile=99.9)
    obs.observe(x)
    lo, hi = obs.range()
    assert 2.5 < hi < 4.5 and -4.5 < lo < -2.5


def test_mse_observer_beats_minmax_at_low_bits():
    x = _heavy_tailed()
    mse_obs, mm_obs = make_observer("mse", bits=4), make_observer("minmax", bits=4)
    for chunk in x.split(5000):
        mse_obs.observe(chunk), mm_obs.observe(chunk)
    assert _mse(x, *mse_obs.range(), 4) < 0.5 * _mse(x, *mm_obs.range(), 4)


def test_unknown_observer_and_empty_calibration():
    with pytest.raises(ConfigError) as err:
        make_observer("kl")
    assert err.value.field == "calibration.observer"
    with pytest.raises(ConfigError) as err:
        CalibrationConfig(observer="entropy")
    assert err.value.field == "calibration.observer"
    with pytest.raises(ConfigError) as err:
        make_observer("minmax").range()
    assert err.value.field == "calibration"
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError) as err:
        quantize_(model, StaticConfig(), calibration=[])
    assert err.value.field == "calibration"


def test_nan_in_calibration_data_raises():
    with pytest.raises(ValueError, match="NaN or Inf"):
        make_observer("minmax").observe(torch.tensor([1.0, float("nan")]))
