"""Cross-validation of the chosen candidate: the folds' counts judged with hand-computed numbers, and how its
verdict orders the candidates."""

from __future__ import annotations

import math

import pytest

from torchslim.search.crossval import cv_text, cv_warning, fold_override, judge
from torchslim.search.feasibility import choose_best, is_confirmed, is_refuted, preference_tiers, violations
from torchslim.search.outputs import csv_row, short_of_preference

LIMITS = {"max_size_bytes": {"limit": 4000, "measured": 0, "met": True},
          "max_metric_drop": {"limit": 0.01, "measured": 0.0, "met": True}}


def test_the_folds_counts_are_summed_and_their_drop_judged_with_its_margin():
    # three folds of 479 samples: 14 lost and 4 gained in all; drop 10/1437 = 0.00696, standard error
    # sqrt((18/1437 - (10/1437)**2) / 1437) = 0.00294: bound 0.00990 at one standard error, within 0.01
    cv = judge([(5, 1, 479), (6, 2, 479), (3, 1, 479)], 1.0, LIMITS, 0.96)
    stderr = math.sqrt((18 / 1437 - (10 / 1437) ** 2) / 1437)
    assert (cv["losses"], cv["gains"], cv["samples"], cv["folds"]) == (14, 4, 1437, 3)
    assert cv["drop"] == pytest.approx(10 / 1437) and cv["stderr"] == pytest.approx(stderr)
    assert cv["bound"] == pytest.approx(0.00990, abs=1e-5) and cv["met"] and cv["failed"] == []
    # two standard errors: 0.01284, past the limit
    strict = judge([(5, 1, 479), (6, 2, 479), (3, 1, 479)], 2.0, LIMITS, 0.96)
    assert not strict["met"] and strict["failed"] == ["max_metric_drop"]
    # a floor instead of a drop: 0.95 against the baseline 0.96 less the bound (0.9501): met, and 0.951 not
    floor = {"min_metric": {"limit": 0.95, "measured": 0.97, "met": True}}
    assert judge([(14, 4, 1437)], 1.0, floor, 0.96)["met"]
    assert not judge([(14, 4, 1437)], 1.0, {"min_metric": {**floor["min_metric"], "limit": 0.951}}, 0.96)["met"]
    assert cv_text(cv) == ("on 3 folds of 1,437 samples: drop 0.70 points (14 lost, 4 gained), bound 0.99 "
                           "(standard error 0.29)")
    assert fold_override(1, 3) == "domain.data.fold={index: 1, of: 3}"


def _record(number, size, within_losses=True, cv=None):
    metrics = {"baseline_value": 0.96, "constraints": {
        "max_size_bytes": {"limit": 4000, "measured": size, "met": size <= 4000},
        "max_metric_drop": {"limit": 0.01, "measured": 0.0, "met": True}}}
    record = {"number": number, "size_bytes": size, "value": 0.96, "baseline_value": 0.96, "speedup_batch_64": 1.0,
              "constraints": metrics["constraints"], "violations": violations(metrics),
              "margin_violations": {"max_metric_drop": 0.0, "max_size_bytes": 0.0},
              "loss_constraints": {"max_metric_drop": {"limit": 0.01, "measured": 0.0, "met": within_losses}}}
    if cv is not None:
        record["cv"] = {"met": cv, "failed": [] if cv else ["max_metric_drop"], "folds": 3, "samples": 1437,
                        "drop": 0.004 if cv else 0.012, "bound": 0.006 if cv else 0.015, "stderr": 0.002,
                        "losses": 6 if cv else 17, "gains": 0}
    return record


def test_a_candidate_whose_drop_held_comes_first_and_one_whose_drop_did_not_last_in_its_tier():
    small, held, untried, shaky = (_record(0, 2400, cv=False), _record(1, 3000, cv=True), _record(2, 2600),
                                   _record(3, 2500, within_losses=False))
    assert is_refuted(small) and is_confirmed(held) and not is_refuted(untried) and not is_confirmed(untried)
    assert choose_best([small, held, untried, shaky])["number"] == 1  # held beats smaller, untried ones
    assert choose_best([small, untried, shaky])["number"] == 2  # untried within losses, before shaky
    assert choose_best([small, untried])["number"] == 2  # refuted: after the others of its tier
    # but before a candidate of a later tier, whose validation figures are weaker and which may not have been tried
    assert choose_best([small, shaky])["number"] == 0
    assert choose_best([shaky])["number"] == 3
    # the order cross-validation tries them in: by losses first, each tier smallest first
    tiers = preference_tiers([held, small, untried, shaky])
    assert [[r["number"] for r in tier] for tier in tiers] == [[0, 2, 1], [3], []]
    assert short_of_preference(small) == "its drop did not hold on cross-validation"
    assert short_of_preference(held) == "" and short_of_preference(shaky) == "within the margin, not by its losses"


def test_what_the_user_is_told_of_a_best_that_cross_validation_did_not_confirm():
    assert cv_warning(_record(1, 3000, cv=True), 3, 2) is None
    assert cv_warning(_record(2, 2600), 0, 0) is None  # cross-validation off
    refuted = cv_warning(_record(0, 2400, cv=False), 3, 4)
    assert refuted.startswith("best's drop did not hold on cross-validation (on 3 folds of 1,437 samples: drop "
                              "1.20 points") and "max_metric_drop not met), nor did the 3 tried before it" in refuted
    untried = cv_warning(_record(2, 2600), 3, 1)
    assert "not cross-validated (1 tried before it did not hold): the time ran out" in untried


def test_trials_csv_shows_a_candidates_cross_validation():
    row = csv_row(0, "COMPLETE", {**_record(0, 2400, cv=False), "brief": "w0.25 ft3", "compression_ratio": 9.0,
                                  "speedup_batch_1": 1.0, "latency_ms": {"batch_1": 0.1, "batch_64": 1.0}})
    assert (row["cv_drop"], row["cv_bound"], row["cv_holds"]) == (0.012, 0.015, False)
    plain = csv_row(1, "COMPLETE", {**_record(1, 2400), "brief": "w0.25 ft3", "compression_ratio": 9.0,
                                    "speedup_batch_1": 1.0, "latency_ms": {"batch_1": 0.1, "batch_64": 1.0}})
    assert "cv_drop" not in plain


class _Study:
    def __init__(self):
        self.user_attrs = {}

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def _search(tmp_path, records, holds, seconds=10.0):
    """An AutoSearch whose candidates' cross-validations are told, not run: ``holds`` maps a trial number to
    whether its drop holds."""
    from torchslim.domain import load_domain
    from torchslim.search.study import AutoSearch

    domain = load_domain({"name": "d", "task": "image-classification", "data": {"source": "digits"},
                          "model": {"name": "lenet300_100"}, "constraints": {"max_metric_drop": 0.01}})
    ran = []

    class Told(AutoSearch):
        def _with_artifacts(self, study):
            return [{**r, **({"cv": study.user_attrs[f"cv:{r['number']}"]} if f"cv:{r['number']}" in study.user_attrs
                             else {})} for r in records]

        def _can_cross_validate(self, record):
            return True

        def _cv_cost(self, record):  # no shared stage left to run; each candidate ``seconds``
            return 0.0, seconds

        def cross_validate(self, study, record):
            ran.append(record["number"])
            result = judge([(0, 0, 100)] if holds[record["number"]] else [(5, 0, 100)], 1.0, LIMITS, 0.96)
            study.set_user_attr(f"cv:{record['number']}", result)
            return result

        def write(self, study):
            return None

    return Told(domain, tmp_path, folds=3), ran


def _candidate(number, size, epochs, width=0.35, within_losses=True):
    return {**_record(number, size, within_losses), "params": {"width": width, "quant": "kmeans", "bits": 3,
                                                                "epochs": epochs},
            "brief": f"w{width} kmeans3 ft{epochs}"}


def test_cross_validation_tries_candidates_in_order_and_judges_a_retuned_one_as_its_twin(tmp_path):
    # 10 and 11 compress alike (only the fine-tuning differs): 11 is judged as 10 was, not run; 12 (another
    # width) holds: the search stops there, leaving 13 (larger) and 14 (not by its losses) untried
    records = [_candidate(10, 2400, 14), _candidate(11, 2410, 19), _candidate(12, 3000, 20, width=0.25),
               _candidate(13, 3100, 20, width=0.5), _candidate(14, 2300, 20, width=0.2, within_losses=False)]
    search, ran = _search(tmp_path, records, {10: False, 11: True, 12: True, 13: True, 14: True})
    study = _Study()
    assert search._cross_validate_best(study, deadline=None) == 2
    assert ran == [10, 12]
    assert study.user_attrs["cv:11"]["like"] == 10 and not study.user_attrs["cv:11"]["met"]
    chosen = choose_best(search._with_artifacts(study))
    assert chosen["number"] == 12 and is_confirmed(chosen)
    # every candidate by its losses refuted: the next tier is tried
    search, ran = _search(tmp_path, records, {10: False, 11: False, 12: False, 13: False, 14: True})
    assert search._cross_validate_best(_Study(), deadline=None) == 4 and ran == [10, 12, 13, 14]


def test_cross_validation_starts_none_that_would_end_past_the_deadline(tmp_path):
    import time

    records = [_candidate(10, 2400, 14), _candidate(12, 3000, 20, width=0.25)]
    search, ran = _search(tmp_path, records, {10: False, 12: True}, seconds=30.0)
    said = []
    search.log = said.append
    assert search._cross_validate_best(_Study(), deadline=time.monotonic() + 20) == 0 and ran == []
    assert said == ["cross-validation: no time left to run trial 10 on 3 folds (about 30s)"]


def test_cross_validation_judges_twins_across_tiers_and_stops_after_its_most(tmp_path, monkeypatch):
    import torchslim.search.study as study_module

    # 15 (not by its losses) compresses as 10 does: judged as 10 was though it is in the next tier
    records = [_candidate(10, 2400, 14), _candidate(12, 3000, 20, width=0.25),
               _candidate(15, 2300, 3, within_losses=False), _candidate(16, 2500, 3, width=0.7, within_losses=False)]
    search, ran = _search(tmp_path, records, {10: False, 12: False, 15: True, 16: True})
    study = _Study()
    assert search._cross_validate_best(study, deadline=None) == 3 and ran == [10, 12, 16]
    assert study.user_attrs["cv:15"]["like"] == 10
    monkeypatch.setattr(study_module, "CV_MOST", 2)
    search, ran = _search(tmp_path, records, {10: False, 12: False, 15: False, 16: True})
    said = []
    search.log = said.append
    assert search._cross_validate_best(_Study(), deadline=None) == 3 and ran == [10, 12]
    assert said[-1] == "cross-validation: 2 candidates did not hold; no more are tried"


def test_time_is_kept_for_the_first_candidate_cross_validation_would_try(tmp_path):
    held, smaller, refuted = (_candidate(12, 3000, 20, width=0.25), _candidate(10, 2400, 14),
                              _candidate(11, 2300, 5, width=0.7))
    search, _ = _search(tmp_path, [], {}, seconds=30.0)
    search.timeout = 540.0
    held["cv"], refuted["cv"] = judge([(0, 0, 100)], 1.0, LIMITS, 0.96), judge([(5, 0, 100)], 1.0, LIMITS, 0.96)
    # a smaller candidate found after one held: it is tried first, so time is kept for it
    assert search._first_unchecked([held, smaller, refuted])["number"] == 10
    assert search._cv_reserve([held, smaller, refuted], left=540.0) == 150.0  # 5 candidates' worth
    # nothing before the one that held: no time is kept, candidates run to the timeout
    assert search._first_unchecked([held, refuted]) is None and search._cv_reserve([held, refuted], 540.0) == 0.0
    search.timeout = 120.0
    assert search._cv_reserve([smaller], left=120.0) == 40.0  # at most a third of the timeout
    # time that no cross-validation could use is not kept: one candidate's (30 s) does not fit in a third of a 60 s
    # timeout, nor in the 25 s left of a longer one
    search.timeout = 60.0
    assert search._cv_reserve([smaller], left=60.0) == 0.0
    search.timeout = 540.0
    assert search._cv_reserve([smaller], left=25.0) == 0.0 and search._cv_reserve([smaller], left=31.0) == 150.0


def test_only_a_feasible_candidate_of_a_domain_with_a_metric_constraint_is_cross_validated(tmp_path):
    from torchslim.domain import load_domain
    from torchslim.search.study import AutoSearch

    def search(constraints):
        domain = load_domain({"name": "d", "task": "image-classification", "data": {"source": "digits"},
                              "model": {"name": "lenet300_100"}, "constraints": constraints})
        made = AutoSearch(domain, tmp_path / "out")
        made._val = object()  # the validation split is read: losses and gains can be counted
        return made

    feasible = {**_record(0, 2400), "val_constraints": LIMITS}
    assert search({"max_metric_drop": 0.01})._can_cross_validate(feasible)
    assert search({"min_metric": 0.9})._can_cross_validate(feasible)
    # bytes or a ratio alone: no drop for the folds to check, so none runs (it would "hold" whatever it lost)
    assert not search({"max_size_bytes": 4000})._can_cross_validate(feasible)
    assert not search({"min_compression_ratio": 10})._can_cross_validate(feasible)
    assert not search({"max_metric_drop": 0.01})._can_cross_validate(_record(1, 5000) | {"val_constraints": LIMITS})
