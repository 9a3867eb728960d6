"""What a sensitivity allocation will allot, read from tables measured earlier: candidates differing only in a
nominal sparsity above what the analysis allows are one model; a table that cannot tell says so."""

from __future__ import annotations

import csv
import json

import pytest

from torchslim.search import allocation

# a structured stage's record as the prune stage writes it (grid 0.1-0.4, bound 0.005 on 180 digits: one digit lost
# is 0.0056): fc1 keeps its metric to 0.2 and loses a digit at 0.3; fc2 loses one at 0.2
BASE = 0.9722
STRUCTURED = {"stage": "prune", "method": "structured", "sensitivity_baseline": BASE,
              "sensitivity": [{"layer": "fc1", "sparsity": 0.1, "val_metric": BASE},
                              {"layer": "fc1", "sparsity": 0.2, "val_metric": BASE},
                              {"layer": "fc1", "sparsity": 0.3, "val_metric": BASE - 1 / 180},
                              {"layer": "fc1", "sparsity": 0.4, "val_metric": BASE},  # past the failure: unread
                              {"layer": "fc2", "sparsity": 0.1, "val_metric": BASE},
                              {"layer": "fc2", "sparsity": 0.2, "val_metric": BASE - 1 / 180},
                              {"layer": "fc2", "sparsity": 0.3, "val_metric": None},  # would empty it
                              {"layer": "fc2", "sparsity": 0.4, "val_metric": None}],
              "sensitivity_overrides": ["fc1 0.2", "fc2 0.1"]}
AFTER = 0.9611  # the model after that cut and 18 epochs of fine-tuning: magnitude grid 0.5-0.7
MAGNITUDE = {"stage": "prune", "method": "magnitude", "sensitivity_baseline": AFTER,
             "sensitivity": [{"layer": "fc1", "sparsity": 0.5, "val_metric": AFTER + 1 / 180},
                             {"layer": "fc1", "sparsity": 0.6, "val_metric": AFTER},
                             {"layer": "fc1", "sparsity": 0.7, "val_metric": AFTER - 2 / 180},
                             {"layer": "fc2", "sparsity": 0.5, "val_metric": AFTER},
                             {"layer": "fc2", "sparsity": 0.6, "val_metric": AFTER - 1 / 180},
                             {"layer": "fc2", "sparsity": 0.7, "val_metric": AFTER},
                             {"layer": "fc3", "sparsity": 0.5, "val_metric": AFTER - 3 / 180},
                             {"layer": "fc3", "sparsity": 0.6, "val_metric": AFTER},
                             {"layer": "fc3", "sparsity": 0.7, "val_metric": AFTER}],
             "sensitivity_overrides": ["fc1 0.6", "fc2 0.5", "fc3 0"]}
MEASURED = {"width": 0.35, "structured": 0.4, "sparsity": 0.7, "allocation": "sensitivity", "kd": False,
            "quant": "kmeans", "bits": 4, "epochs": 18}
BOUND = 0.005


def _tables(params=MEASURED, records=({"stage": "train"}, STRUCTURED, MAGNITUDE), threads=1):
    # through the attribute form the study stores them in
    return allocation.from_attr(json.loads(json.dumps(allocation.to_attr(
        allocation.measured_tables(params, list(records), threads)))))


def test_a_table_allots_what_the_analysis_chooses_and_none_when_it_lacks_a_sparsity():
    table = _tables()["t1|w0.35|structured"]
    assert allocation.allotted(table, [0.1, 0.2, 0.3, 0.4], BOUND) == {"fc1": 0.2, "fc2": 0.1}
    assert allocation.allotted(table, [0.1, 0.2], BOUND) == {"fc1": 0.2, "fc2": 0.1}
    assert allocation.allotted(table, [0.1], BOUND) == {"fc1": 0.1, "fc2": 0.1}
    assert allocation.allotted(table, [0.1, 0.15], BOUND) is None  # 0.15 was never measured
    # past each layer's first failure nothing is read: a sparsity never measured there does not matter
    assert allocation.allotted(table, [0.1, 0.2, 0.3, 0.4, 0.8], BOUND) == {"fc1": 0.2, "fc2": 0.1}
    assert allocation.allotted(table, [0.1, 0.2, 0.3, 0.4], 2 / 180) == {"fc1": 0.4, "fc2": 0.2}


def test_candidates_above_every_cap_are_one_model_and_the_others_are_not():
    tables = _tables()
    assert set(tables) == {"t1|w0.35|structured",
                           't1|w0.35|structured:{"fc1": 0.2, "fc2": 0.1}|ft18|magnitude'}

    def ident(**change):
        return allocation.identity({**MEASURED, **change}, tables, BOUND, threads=1)

    measured = ident()
    assert json.loads(measured)["structured"] == {"fc1": 0.2, "fc2": 0.1}
    assert json.loads(measured)["sparsity"] == {"fc1": 0.6, "fc2": 0.5, "fc3": 0.0}
    # structured 0.3 or 0.8: still fc1 0.2 and fc2 0.1; magnitude 0.95: still its caps (0.8, 0.9, 0.95 unread)
    assert ident(structured=0.3) == ident(structured=0.8) == ident(sparsity=0.95) == measured
    assert ident(structured=0.3, sparsity=0.7) == measured
    # structured 0.1 cuts fc1 to 0.1 only: another cut, whose magnitude table was never measured
    assert ident(structured=0.1) is None
    assert ident(sparsity=0.6) == measured  # fc1 0.6, fc2 0.5 (fails at 0.6), fc3 0: the same
    assert ident(sparsity=0.5) != measured and json.loads(ident(sparsity=0.5))["sparsity"] == {
        "fc1": 0.5, "fc2": 0.5, "fc3": 0.0}
    assert ident(sparsity=0.55) is None  # 0.55 was never measured
    # what is not allotted stays apart: fine-tuning (another model before magnitude pruning: unknown), bits, kd
    assert ident(epochs=17) is None
    assert ident(bits=3) != measured and ident(kd=True) != measured
    assert ident(width=0.5) is None
    # tables measured on another thread count are another model's
    assert allocation.identity(MEASURED, tables, BOUND, threads=2) is None
    assert allocation.identity({**MEASURED, "allocation": "stage"}, tables, BOUND, threads=1) is None


def test_magnitude_alone_is_keyed_by_the_width_and_merged_tables_extend_the_grid():
    params = {"width": 0.35, "structured": 0.0, "sparsity": 0.6, "allocation": "sensitivity", "kd": False,
              "quant": "none", "epochs": 5}
    rows = [r for r in MAGNITUDE["sensitivity"] if r["sparsity"] <= 0.6]
    tables = _tables(params, [{**MAGNITUDE, "sensitivity": rows}])
    assert set(tables) == {"t1|w0.35|magnitude"}
    # fc1 passed 0.5 and 0.6; 0.7 was not measured by this candidate: unknown until another one measures it
    assert allocation.identity({**params, "sparsity": 0.7}, tables, BOUND, 1) is None
    allocation.merge(tables, _tables({**params, "sparsity": 0.7}, [MAGNITUDE]))
    assert json.loads(allocation.identity({**params, "sparsity": 0.9}, tables, BOUND, 1))["sparsity"] == {
        "fc1": 0.6, "fc2": 0.5, "fc3": 0.0}


DOMAIN = {"name": "digits-auto", "task": "image-classification",
          "data": {"source": "digits", "test_fraction": 0.2, "val_fraction": 0.1, "seed": 0},
          "model": {"name": "lenet300_100", "kwargs": {"hidden1": 64, "hidden2": 32}}, "metric": "accuracy",
          "constraints": {"max_metric_drop": 0.001}}


@pytest.mark.slow
def test_a_candidate_that_allots_what_an_earlier_one_did_is_not_run(tmp_path, monkeypatch):
    from torchslim.domain import load_domain
    from torchslim.search import run_auto
    from torchslim.search import study as study_module
    from torchslim.search.space import SearchSettings

    # structured pruning of neurons by sensitivity under a 0.05-point bound (any digit lost fails), capped at
    # 0.7, then at 0.8: the second tries 0.8 only for a layer that kept every digit at 0.7
    point = {"width": 1.0, "structured": 0.7, "sparsity": 0.0, "allocation": "sensitivity", "kd": False,
             "quant": "none", "epochs": 1}
    monkeypatch.setattr(study_module, "starting_points", lambda _d, _s: [point, {**point, "structured": 0.8}])
    lines: list[str] = []
    settings = SearchSettings(baseline_epochs=3, max_epochs=1, stop_slack=0.0)
    result = run_auto(load_domain(DOMAIN), tmp_path / "out", trials=2, threads=1, settings=settings,
                      log=lines.append)
    metrics = json.loads((tmp_path / "out" / "trials" / "0" / "metrics.json").read_text())
    allotted = {n: float(s) for n, s in (x.split() for x in metrics["stages"][1]["sensitivity_overrides"])}
    assert set(allotted) == {"fc1", "fc2"} and max(allotted.values()) < 0.7  # what makes 0.8 allot the same
    assert len(result.records) == 1 and not (tmp_path / "out" / "trials" / "1").exists()
    with open(tmp_path / "out" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["candidate"] for r in rows] == ["struct0.7/sens ft1", "struct0.8/sens ft1"]
    assert rows[1]["note"] == "same candidate as trial 0: its sensitivity analysis allots the same sparsities"
    assert any(line.startswith("trial 1: struct0.8/sens ft1 | the same candidate as trial 0, its sensitivity")
               for line in lines)
    import optuna

    first, again = optuna.load_study(study_name="auto-digits-auto",
                                     storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}").trials
    assert again.values == first.values and again.constraints == first.constraints
