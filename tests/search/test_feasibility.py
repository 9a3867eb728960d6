"""Constraints as relative violations, the best feasible candidate and the closest one, with hand-computed
numbers."""

from __future__ import annotations

import math

import pytest

from torchslim.search.feasibility import (choose_best, format_number, infeasible_line, is_feasible,
                                          is_within_losses, is_within_margin, relative_violation, unconfirmed_line,
                                          violations)
from torchslim.search.noise import losses_bound, on_losses
from torchslim.search.outputs import short_of_preference


def test_relative_violation_of_each_kind():
    assert relative_violation("max_size_bytes", 1000, 1500) == pytest.approx(0.5)
    assert relative_violation("max_size_bytes", 1000, 800) == pytest.approx(-0.2)
    assert relative_violation("max_latency_ms", 2.0, 3.0) == pytest.approx(0.5)
    assert relative_violation("min_speedup", 4.0, 3.0) == pytest.approx(0.25)
    assert relative_violation("min_compression_ratio", 10.0, 12.5) == pytest.approx(-0.25)
    assert relative_violation("min_metric", 0.9, 0.81) == pytest.approx(0.1)
    # a minimum of 0.9 below a 0.96 baseline allows 0.06: 0.81 is 0.09 under it, 1.5 times the allowance
    assert relative_violation("min_metric", 0.9, 0.81, baseline_value=0.96) == pytest.approx(1.5)
    # drop 0.05 against a limit of 0.01: 0.04 past it, four times the drop allowed
    assert relative_violation("max_metric_drop", 0.01, 0.05, baseline_value=0.96) == pytest.approx(4.0)
    # no drop allowed: the excess against the floor (0.96), not a division by zero
    assert relative_violation("max_metric_drop", 0.0, 0.048, baseline_value=0.96) == pytest.approx(0.05)


def _metrics(size, value, met_size, met_drop, baseline=0.96):
    return {"baseline_value": baseline, "constraints": {
        "max_size_bytes": {"limit": 1000, "measured": size, "met": met_size},
        "max_metric_drop": {"limit": 0.01, "measured": baseline - value, "met": met_drop}}}


def test_violations_are_zero_when_met_and_relative_when_not():
    assert violations(_metrics(900, 0.955, True, True)) == {"max_metric_drop": 0.0, "max_size_bytes": 0.0}
    v = violations(_metrics(3000, 0.91, False, False))
    assert v["max_size_bytes"] == pytest.approx(2.0) and v["max_metric_drop"] == pytest.approx(4.0)


def _record(number, size, value, speedup, met_size, met_drop):
    m = _metrics(size, value, met_size, met_drop)
    return {"number": number, "size_bytes": size, "value": value, "speedup_batch_64": speedup,
            "constraints": m["constraints"], "violations": violations(m)}


def test_best_feasible_for_each_objective():
    records = [_record(0, 900, 0.955, 1.0, True, True), _record(1, 700, 0.951, 3.0, True, True),
               _record(2, 500, 0.80, 9.0, True, False), _record(3, 950, 0.96, 2.0, True, True)]
    assert choose_best(records, "size")["number"] == 1
    assert choose_best(records, "latency")["number"] == 1
    assert choose_best(records, "metric")["number"] == 3


def test_candidates_within_the_drop_margin_come_first_then_the_feasible_ones():
    # 700 bytes: feasible as measured, but its drop plus the margin is past the limit; 900 bytes: within both
    shaky = {**_record(1, 700, 0.951, 3.0, True, True), "margin_violations": {"max_metric_drop": 0.4,
                                                                                "max_size_bytes": 0.0}}
    sure = {**_record(0, 900, 0.955, 1.0, True, True), "margin_violations": {"max_metric_drop": 0.0,
                                                                               "max_size_bytes": 0.0}}
    broken = _record(2, 500, 0.80, 9.0, True, False)
    assert choose_best([shaky, sure, broken], "size")["number"] == 0
    assert choose_best([shaky, broken], "size")["number"] == 1  # feasible as run reports it: still the best
    assert is_feasible(shaky) and not is_within_margin(shaky) and is_within_margin(sure)
    assert not is_within_margin(broken)


def test_candidates_within_the_limit_by_their_losses_alone_come_first():
    # 180 validation samples, limit 0.01. "lucky": 2 lost, 3 gained: drop -1/180, standard error
    # sqrt((5/180 - (1/180)**2) / 180) = 0.01239, within the margin (0.0068); by its losses alone 2/180 plus
    # sqrt(2/180 * 178/180 / 180) = 0.0190, past it. "clean": none lost, one gained.
    def judged(drop):
        return {"max_size_bytes": {"limit": 4000, "measured": 0, "met": True},
                "max_metric_drop": {"limit": 0.01, "measured": drop, "met": drop <= 0.01}}

    lucky_stderr = math.sqrt((5 / 180 - (1 / 180) ** 2) / 180)
    lucky = {**_record(1, 2666, 0.96, 3.0, True, True), "margin_violations": {"max_metric_drop": 0.0,
                                                                               "max_size_bytes": 0.0},
             "loss_constraints": on_losses(judged(-1 / 180), 0.96, losses_bound(2, 180, 1.0))}
    clean = {**_record(0, 3008, 0.96, 1.0, True, True), "margin_violations": {"max_metric_drop": 0.0,
                                                                               "max_size_bytes": 0.0},
             "loss_constraints": on_losses(judged(-1 / 180), 0.96, losses_bound(0, 180, 1.0))}
    assert -1 / 180 + lucky_stderr == pytest.approx(0.0068, abs=1e-4)  # within the margin
    assert losses_bound(2, 180, 1.0) == pytest.approx(0.0190, abs=1e-4)  # not by its losses alone
    assert is_within_margin(lucky) and not is_within_losses(lucky) and is_within_losses(clean)
    assert choose_best([lucky, clean], "size")["number"] == 0
    assert choose_best([lucky], "size")["number"] == 1  # within the margin: still preferred to a merely feasible one
    assert short_of_preference(lucky) == "within the margin, not by its losses" and short_of_preference(clean) == ""
    # a record searched without loss figures (an older study, --drop-margin 0) stands as its margin says
    old = {**clean}
    del old["loss_constraints"]
    assert not is_within_losses(old) and short_of_preference(old) == ""
    assert choose_best([lucky, old], "size")["number"] == 1


def test_a_best_feasible_only_as_measured_is_said_to_be_unconfirmed():
    # one validation image of 180 lost (0.0056) with a standard error of 0.0055: within 0.01 as measured, 0.0111
    # with the margin, past it
    drop, stderr = 1 / 180, 0.0055
    val = {"max_size_bytes": {"limit": 1000, "measured": 700, "met": True},
           "max_metric_drop": {"limit": 0.01, "measured": drop, "met": True}}
    margin = {**val, "max_metric_drop": {"limit": 0.01, "measured": drop + stderr, "met": False}}
    shaky = {**_record(1, 700, 0.951, 3.0, True, True), "val_constraints": val, "margin_constraints": margin,
             "margin_violations": {"max_metric_drop": 0.11, "max_size_bytes": 0.0}}
    line = unconfirmed_line(shaky, 180, "out/best")
    assert line.startswith("best's max_metric_drop is 0.005556 on the validation split, within 0.01 as measured but "
                           "not with its margin (0.01106): no candidate was within it")
    assert "one of its 180 samples is 0.56 points" in line and "torchslim eval out/best" in line
    assert line.endswith("data.val_fraction)")
    sure = {**shaky, "margin_constraints": val, "margin_violations": {"max_metric_drop": 0.0, "max_size_bytes": 0.0}}
    assert unconfirmed_line(sure, 180) is None  # within the margin: nothing to say
    assert unconfirmed_line(_record(2, 500, 0.80, 9.0, True, False)) is None  # infeasible: the exit-3 line says it


def test_closest_is_the_smallest_summed_relative_violation():
    # each constraint's excess in units of what it allows: bytes over 1,000, drop over the 1-point limit
    records = [_record(0, 3000, 0.955, 1.0, False, True),   # 2.0 (the drop, 0.5 points, is met)
               _record(1, 1500, 0.94, 1.0, False, False),   # 0.5 + (0.02 - 0.01) / 0.01 = 1.5
               _record(2, 1200, 0.90, 1.0, False, False)]   # 0.2 + (0.06 - 0.01) / 0.01 = 5.2
    best = choose_best(records, "size")
    assert best["number"] == 1
    assert sum(best["violations"].values()) == pytest.approx(1.5)
    # each constraint the chosen one fails, with the closest value any candidate reached: which one, and the
    # chosen one's (what best/ holds), where another came closer
    assert infeasible_line(best) == ("max_size_bytes: limit 1,000, closest 1,500; "
                                     "max_metric_drop: limit 0.01, closest 0.02")
    assert infeasible_line(best, records) == ("max_size_bytes: limit 1,000, closest 1,200 (trial 2), best 1,500; "
                                              "max_metric_drop: limit 0.01, closest 0.005 (trial 0), best 0.02")
    # where the run reports validation figures, those decided: the line gives them, not the test split's, and
    # says so for the metric's constraints
    judged = {**best, "val_constraints": {"max_size_bytes": best["constraints"]["max_size_bytes"],
                                          "max_metric_drop": {"limit": 0.01, "measured": 0.0233, "met": False}}}
    assert infeasible_line(judged) == ("max_size_bytes: limit 1,000, closest 1,500; "
                                       "max_metric_drop on validation: limit 0.01, closest 0.0233")
    assert choose_best([], "size") is None


def test_numbers_in_messages():
    assert format_number(2911) == "2,911" and format_number(50) == "50" and format_number(0.0306) == "0.0306"
    assert format_number(3.14159) == "3.142"


def test_stop_floor_is_the_constraint_floor_less_slack_times_the_allowed_drop():
    from torchslim.search.feasibility import stop_floor

    # baseline 0.96, drop 0.01 allowed: the floor is 0.95; with slack 1 a candidate is stopped below 0.94
    assert stop_floor({"max_metric_drop": 0.01}, 0.96, 1.0) == pytest.approx(0.94)
    assert stop_floor({"max_metric_drop": 0.01}, 0.96, 2.5) == pytest.approx(0.925)
    # min_metric 0.9 from a 0.96 baseline allows 0.06: stopped below 0.84
    assert stop_floor({"min_metric": 0.9, "max_metric_drop": None}, 0.96, 1.0) == pytest.approx(0.84)
    # nothing to judge by: no metric constraint, slack 0, or a floor at or above the baseline
    assert stop_floor({"max_size_bytes": 1000}, 0.96, 1.0) is None
    assert stop_floor({"max_metric_drop": 0.01}, 0.96, 0.0) is None
    assert stop_floor({"min_metric": 0.97}, 0.96, 1.0) is None


def test_a_candidate_timed_on_a_busy_machine_says_so_in_its_line_and_row():
    from torchslim.search.outputs import csv_row
    from torchslim.search.study import record_of

    metrics = {**_metrics(900, 0.955, True, True), "metric": "accuracy", "value": 0.955, "size_bytes": 900,
               "baseline_size_bytes": 4000, "compression_ratio": 4.4, "latency_ms": {"batch_1": 0.1, "batch_64": 1.0},
               "baseline_latency_ms": {"batch_1": 0.2, "batch_64": 2.0}, "latency_ratio_batch_64": 2.0,
               "latency_spread": {}, "threads": 2, "cores": 2, "artifact_sha256": "x"}
    params = {"width": 1.0, "structured": 0.0, "sparsity": 0.9, "kd": False, "quant": "none", "epochs": 2}
    quiet = record_of(0, {**metrics, "others_running": 0}, params, {})
    busy = record_of(1, {**metrics, "others_running": 1}, params, {})
    unsteady = record_of(2, {**metrics, "others_running": 0, "latency_spread": {
        "batch_64": {"baseline_iqr_ms": [3.5, 25.9], "compressed_iqr_ms": [2.7, 3.0]}}}, params, {})
    assert not quiet["busy"] and busy["busy"] and unsteady["busy"]
    assert "note" not in csv_row(0, "COMPLETE", quiet)
    assert csv_row(1, "COMPLETE", busy)["note"] == "timed on a busy machine or unsteadily: its latencies may be far off"
