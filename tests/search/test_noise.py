"""The drop's standard error from paired per-sample results, and the metric constraints judged with it."""

from __future__ import annotations

import math

import pytest
import torch

from torchslim.search.noise import correct_per_sample, paired_drop_stderr, with_margin


def test_agreeing_models_have_no_uncertainty_and_disagreements_add_it():
    base = torch.tensor([True] * 95 + [False] * 5)
    assert paired_drop_stderr(base, base.clone()) == 0.0
    # 3 samples only the baseline gets right, 1 only the candidate: d in {-1, 0, 1}, mean 0.02,
    # variance 4/100 - 0.02**2 = 0.0396, standard error sqrt(0.0396 / 100)
    cand = base.clone()
    cand[:3] = False
    cand[95] = True
    assert paired_drop_stderr(base, cand) == pytest.approx(math.sqrt(0.0396 / 100))


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
