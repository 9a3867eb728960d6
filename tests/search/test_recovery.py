"""What later stages win back, from finished candidates' per-stage validation figures computed by hand, and the
stop rule that allows for it."""

from __future__ import annotations

import pytest

from torchslim.search.recovery import recovery, stage_values, tail

# a half-width candidate: baseline, student, magnitude pruning, distillation, k-means, distillation
STUDENT = {"stages": [{"train": {}}, {"distill": {}}, {"prune": {}}, {"distill": {}}, {"quantize": {}},
                      {"distill": {}}]}
# the same stages after the pruning on the full-width model (no student)
FULL = {"stages": [{"train": {}}, {"prune": {}}, {"distill": {}}, {"quantize": {}}, {"distill": {}}]}
# structured, then magnitude pruning
TWO_CUTS = {"stages": [{"train": {}}, {"prune": {}}, {"prune": {}}, {"distill": {}}, {"quantize": {}},
                       {"distill": {}}]}
AFTER_PRUNE = ("prune", "distill", "quantize", "distill")


def _finished(recipe, index, after_stage, final):
    return {"recipe": recipe, "stage_values": {str(index): after_stage}, "val_value": final}


def test_tail_is_the_kinds_of_the_stages_from_an_index():
    assert tail(STUDENT, 2) == AFTER_PRUNE == tail(FULL, 1)
    assert tail(TWO_CUTS, 2) == AFTER_PRUNE and tail(TWO_CUTS, 1) == ("prune", *AFTER_PRUNE)
    assert tail(STUDENT, 4) == ("quantize", "distill")


def test_stage_values_keep_each_stage_that_measured_its_saved_model():
    records = [{"index": 2, "stage": "prune", "artifact_val_metric": 0.95}, {"index": 3, "stage": "distill"},
               {"index": 4, "stage": "quantize", "artifact_val_metric": 0.9611}]
    assert stage_values(records) == {"2": 0.95, "4": 0.9611}


def test_recovery_is_the_ninetieth_percentile_of_what_comparable_candidates_won_back():
    # ten candidates with a pruning stage followed by distillation, k-means, distillation (at index 2 after a
    # student, at index 1 without): won back 0.01, 0.02, ..., 0.10; the ninth smallest of ten is 0.09
    finished = [_finished(STUDENT if k % 2 else FULL, 2 if k % 2 else 1, 0.90, 0.90 + 0.01 * k) for k in range(1, 11)]
    noise = [_finished(TWO_CUTS, 1, 0.50, 0.97),  # its index 1 is followed by another pruning stage: not comparable
             {"recipe": STUDENT, "stage_values": {"3": 0.5}, "val_value": 0.97},  # no figure after its pruning
             {"recipe": STUDENT, "val_value": 0.97},  # a record from before the figures were kept
             {"recipe": STUDENT, "stage_values": {"2": 0.5}}]  # no validation figure (a metric without one)
    assert recovery(finished + noise, AFTER_PRUNE) == pytest.approx(0.09)
    # a structured cut's comparable candidates are those with two pruning stages: one, too few to say anything
    assert recovery(finished + noise, ("prune", *AFTER_PRUNE)) == 0.0
    # five: the largest of them; four: nothing
    assert recovery(finished[:5], AFTER_PRUNE) == pytest.approx(0.05)
    assert recovery(finished[:4], AFTER_PRUNE) == 0.0


def test_stages_that_lose_are_never_a_reason_to_stop_sooner():
    finished = [_finished(STUDENT, 4, 0.96, 0.96 - 0.01 * k) for k in range(1, 8)]  # k-means' distillation lost
    assert recovery(finished, ("quantize", "distill")) == 0.0


def _search(tmp_path, finished):
    from types import SimpleNamespace

    from torchslim.domain import load_domain
    from torchslim.search.study import AutoSearch

    domain = load_domain({"name": "d", "task": "image-classification", "data": {"source": "digits"},
                          "model": {"name": "lenet300_100"}, "constraints": {"max_metric_drop": 0.01}})

    class Finished(AutoSearch):
        def finished(self, study):
            return finished

    search = Finished(domain, tmp_path)
    search._any_finished, search._baseline_val = True, 0.96
    return search, SimpleNamespace(baseline=object())


def test_a_candidate_is_stopped_only_below_the_floor_less_what_its_later_stages_won_back(tmp_path):
    from torchslim.search.study import CandidateStopped

    # the floor: 0.96 - 2 x 0.01 = 0.94; seven comparable candidates won back 0.005 ... 0.035 (ninetieth
    # percentile: the seventh, 0.035), so one after pruning is stopped below 0.905
    finished = [_finished(STUDENT, 2, 0.90, 0.90 + 0.005 * k) for k in range(1, 8)]
    search, ctx = _search(tmp_path, finished)
    check = search._stop_rule(None, {"width": 0.5}, STUDENT)
    check(ctx, {"index": 2, "stage": "prune", "artifact_val_metric": 0.91})  # below 0.94, within what is won back
    with pytest.raises(CandidateStopped) as stopped:
        check(ctx, {"index": 2, "stage": "prune", "artifact_val_metric": 0.90})
    assert stopped.value.info["floor"] == pytest.approx(0.905) and stopped.value.info["won_back"] == pytest.approx(
        0.035)
    assert str(stopped.value) == ("after stage 2 (prune): val 0.9000 < stop floor 0.9050 (0.9400 less 0.0350 that "
                                  "the stages still to run won back in finished candidates)")
    # after k-means no comparable candidate is known: the floor is the constraints' own
    check(ctx, {"index": 4, "stage": "quantize", "artifact_val_metric": 0.94})
    with pytest.raises(CandidateStopped, match=r"val 0.9390 < stop floor 0.9400$"):
        check(ctx, {"index": 4, "stage": "quantize", "artifact_val_metric": 0.939})
    check(ctx, {"index": 5, "stage": "distill", "artifact_val_metric": 0.5})  # the last stage is never checked
