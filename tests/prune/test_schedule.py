import pytest

from torchslim.prune import polynomial_schedule, sparsity_at, spread_epochs


def test_polynomial_values():
    # s_t = s_f + (s_i - s_f)(1 - t/n)^3 with s_f = 0.8, s_i = 0, n = 4
    expected = [0.8 - 0.8 * (1 - t / 4) ** 3 for t in (1, 2, 3, 4)]
    assert polynomial_schedule(0.8, 4) == pytest.approx(expected)
    assert polynomial_schedule(0.8, 4) == pytest.approx([0.4625, 0.7, 0.7875, 0.8])
    assert polynomial_schedule(0.9, 10)[-1] == pytest.approx(0.9)
    assert polynomial_schedule(0.5, 1) == [0.5]  # one step: one-shot
    assert sparsity_at(0.6, 1, 2, initial=0.2) == pytest.approx(0.6 - 0.4 * 0.125)


def test_polynomial_is_increasing():
    s = polynomial_schedule(0.95, 10)
    assert all(a < b for a, b in zip(s, s[1:]))


def test_step_out_of_range():
    with pytest.raises(ValueError):
        sparsity_at(0.5, 0, 3)


def test_spread_epochs():
    assert spread_epochs(20, 10) == [2] * 10
    assert spread_epochs(5, 3) == [1, 2, 2]
    assert spread_epochs(2, 4) == [0, 0, 1, 1]
    assert sum(spread_epochs(7, 7)) == 7
