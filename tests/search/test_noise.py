"""The drop's standard error from paired per-sample results, and the metric constraints judged with it."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from torchslim.search.noise import (correct_per_sample, counts_stderr, losses_bound, on_losses, paired_counts,
                                   training_sample, with_margin)


def paired_drop_stderr(baseline, candidate):
    return counts_stderr(*paired_counts(baseline, candidate), len(baseline))


def test_agreeing_models_have_no_uncertainty_and_disagreements_add_it():
    base = torch.tensor([True] * 95 + [False] * 5)
    assert paired_drop_stderr(base, base.clone()) == 0.0
    # 3 samples only the baseline gets right, 1 only the candidate: d in {-1, 0, 1}, mean 0.02,
    # variance 4/100 - 0.02**2 = 0.0396, standard error sqrt(0.0396 / 100)
    cand = base.clone()
    cand[:3] = False
    cand[95] = True
    assert paired_drop_stderr(base, cand) == pytest.approx(math.sqrt(0.0396 / 100))


def test_losses_are_counted_without_the_gains_that_offset_them():
    base = torch.tensor([True] * 95 + [False] * 5)
    cand = base.clone()
    cand[:2] = False  # two samples lost
    cand[95:98] = True  # three gained: a drop of -0.01 as measured
    assert paired_counts(base, cand) == (2, 3)
    # 2 of 100 lost: 0.02, plus one standard error of that share, sqrt(0.02 * 0.98 / 100) = 0.014
    assert losses_bound(2, 100, 1.0) == pytest.approx(0.02 + 0.014)
    assert losses_bound(2, 100, 0.0) == pytest.approx(0.02)
    assert losses_bound(0, 180, 1.0) == 0.0  # nothing lost: nothing to doubt
    # one of 180 lost: 0.0056 + 0.0055 is past a 1-point limit, as its drop with the paired margin is not
    assert losses_bound(1, 180, 1.0) == pytest.approx(1 / 180 + math.sqrt(1 / 180 * 179 / 180 / 180))
    assert losses_bound(1, 180, 1.0) > 0.01


def test_judged_on_losses_the_drop_is_the_bound_and_the_minimum_is_below_the_baseline_by_it():
    judged = {"max_metric_drop": {"limit": 0.01, "measured": -0.01, "met": True},
              "min_metric": {"limit": 0.9, "measured": 0.96, "met": True},
              "max_size_bytes": {"limit": 100, "measured": 90, "met": True}}
    out = on_losses(judged, 0.95, 0.034)
    assert out["max_metric_drop"] == {"limit": 0.01, "measured": 0.034, "met": False}
    assert out["min_metric"] == {"limit": 0.9, "measured": pytest.approx(0.916), "met": True}
    assert out["max_size_bytes"] == judged["max_size_bytes"]
    assert on_losses(judged, 0.95, 0.01)["max_metric_drop"]["met"]  # at the limit: met


def test_the_training_inputs_counted_are_all_of_them_or_a_fixed_draw():
    small = TensorDataset(torch.arange(10.0))
    assert training_sample(small, 16) is small
    big = TensorDataset(torch.arange(100.0))
    drawn = training_sample(big, 16)
    picked = [float(drawn[i][0]) for i in range(len(drawn))]
    assert len(picked) == 16 == len(set(picked)) and picked == sorted(picked)
    assert picked == [float(training_sample(big, 16)[i][0]) for i in range(16)]  # the same draw every time
    assert picked != list(range(16))  # drawn across the split, not its first rows


def test_margin_moves_only_the_metric_constraints():
    judged = {"max_metric_drop": {"limit": 0.01, "measured": 0.005, "met": True},
              "max_size_bytes": {"limit": 100, "measured": 90, "met": True}}
    out = with_margin(judged, 0.008)
    assert out["max_metric_drop"] == {"limit": 0.01, "measured": pytest.approx(0.013), "met": False}
    assert out["max_size_bytes"] == judged["max_size_bytes"]
    low = with_margin({"min_metric": {"limit": 0.9, "measured": 0.95, "met": True}}, 0.04)
    assert low["min_metric"]["met"] and low["min_metric"]["measured"] == pytest.approx(0.91)
    assert not with_margin({"min_metric": {"limit": 0.9, "measured": 0.95, "met": True}}, 0.06)["min_metric"]["met"]


def test_correct_per_sample_reads_the_top_class_or_the_top_five():
    logits = torch.tensor([[0.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9]])
    data = torch.utils.data.TensorDataset(torch.arange(2), torch.tensor([2, 6]))
    predict = lambda idx: logits[idx]  # noqa: E731
    assert correct_per_sample(predict, data, "accuracy").tolist() == [False, False]
    assert correct_per_sample(predict, data, "top5").tolist() == [True, True]
