"""A search's first candidates are the standard starting points; a candidate whose validation metric is hopeless
after an intermediate stage is stopped there and recorded as such; a student is distilled once per width."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest

from torchslim.domain import load_domain
from torchslim.search.space import DEEP_COMPRESSION, SearchSettings, starting_points

DOMAIN = {"name": "digits-auto", "task": "image-classification",
          "data": {"source": "digits", "test_fraction": 0.2, "val_fraction": 0.1, "seed": 0},
          "model": {"name": "lenet300_100", "kwargs": {"hidden1": 64, "hidden2": 32}}, "metric": "accuracy"}
SETTINGS = SearchSettings(baseline_epochs=3, max_epochs=1)


def _domain(tmp_path, constraints, runtime="torch"):
    import yaml

    (tmp_path / "domain.yaml").write_text(yaml.safe_dump({**DOMAIN, "constraints": constraints, "runtime": runtime}))
    return load_domain(tmp_path / "domain.yaml")


def test_starting_points_are_deep_compression_then_int8_where_onnxruntime_runs(tmp_path):
    torch_points = starting_points(_domain(tmp_path, {"max_size_bytes": 100}), SETTINGS)
    assert [p["quant"] for p in torch_points] == ["kmeans"] * 3
    assert [p["width"] for p in torch_points] == [1.0, 0.5, 0.25] and {p["epochs"] for p in torch_points} == {1}
    ort_points = starting_points(_domain(tmp_path, {"max_size_bytes": 100}, "onnxruntime"), SETTINGS)
    assert ort_points[:3] == torch_points and [p["quant"] for p in ort_points[3:]] == ["static"] * 4
    factory = load_domain({**DOMAIN, "model": {"factory": "m:build"}, "constraints": {"max_size_bytes": 100}})
    assert starting_points(factory, SETTINGS) == [{k: v for k, v in {**DEEP_COMPRESSION[0], "epochs": 1}.items()
                                                   if k != "width"}]


@pytest.mark.slow
def test_first_trials_are_the_starting_points_and_students_are_distilled_once_per_width(tmp_path, monkeypatch):
    from torchslim.search import run_auto
    from torchslim.stages import STAGES

    students: list[float] = []  # the width of each student distillation that really ran
    distill = STAGES["distill"]

    def counting(ctx, cfg):
        if cfg.student is not None:
            students.append(cfg.student["kwargs"]["width"])
        return distill.run(ctx, cfg)

    monkeypatch.setitem(STAGES, "distill", dataclasses.replace(distill, run=counting))
    domain = _domain(tmp_path, {"max_size_bytes": 50})  # impossible: nothing is stopped, every candidate finishes
    lines: list[str] = []
    result = run_auto(domain, tmp_path / "out", trials=4, threads=1, settings=SETTINGS, log=lines.append)
    records = sorted(result.records, key=lambda r: r["number"])
    assert [r["params"] for r in records[:3]] == starting_points(domain, SETTINGS)
    assert [r["brief"] for r in records[:3]] == ["sparse0.9 kd kmeans5 ft1", "w0.5 sparse0.8 kd kmeans4 ft1",
                                                 "w0.25 sparse0.7 kd kmeans4 ft1"]
    widths = {r["params"].get("width", 1.0) for r in records} - {1.0}
    assert sorted(students) == sorted(w * 1.0 for w in widths)  # once per width, however many candidates
    assert sum(line.startswith("student w") for line in lines) == len(widths)


HOPELESS = {"width": 1.0, "structured": 0.8, "sparsity": 0.0, "allocation": "stage", "kd": True, "quant": "weight",
            "bits": 2, "epochs": 1}
QUICK = {"width": 1.0, "structured": 0.0, "sparsity": 0.0, "kd": False, "quant": "weight", "bits": 8, "epochs": 1}


def _stopping_search(tmp_path, slack, points=(QUICK, HOPELESS)):
    """``points`` as the candidates (by default one that finishes quickly, then a structured-pruning one removing
    80 % of every layer's neurons with one epoch of fine-tuning, then its distillation and quantization) under a
    0.1-point drop limit."""
    from torchslim.search import study as study_module
    from torchslim.search import run_auto

    domain = _domain(tmp_path, {"max_metric_drop": 0.001})
    lines: list[str] = []
    patched = pytest.MonkeyPatch()
    patched.setattr(study_module, "starting_points", lambda _d, _s: [dict(p) for p in points])
    try:
        result = run_auto(domain, tmp_path / "out", trials=len(points), threads=1, log=lines.append,
                          settings=dataclasses.replace(SETTINGS, stop_slack=slack))
    finally:
        patched.undo()
    return result, lines


@pytest.mark.slow
def test_a_hopeless_candidate_is_stopped_after_its_first_stage_and_recorded(tmp_path):
    result, lines = _stopping_search(tmp_path, slack=1.0)
    assert [r["number"] for r in result.records] == [0]
    with open(tmp_path / "out" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED"]
    note = rows[1]["note"]
    assert note.startswith("stopped after stage 1 (prune): val ") and "< stop floor " in note
    value, floor = (float(x) for x in note.split("val ")[1].split(" < stop floor "))
    baseline = float(rows[1]["baseline_val_value"])
    assert value < floor == pytest.approx(baseline - 0.002, abs=1e-4)  # floor - 1 x the 0.001 drop allowed
    assert not (tmp_path / "out" / "trials" / "1" / "metrics.json").exists()  # its later stages never ran
    progress = [line for line in lines if line.startswith("trial 1:")]
    assert progress == [progress[0]] and "| stopped after stage 1 (prune)" in progress[0]
    # the sampler sees it as infeasible by its drop, in units of the 0.001 allowed (not as a feasible trial)
    import optuna

    _, trial = optuna.load_study(study_name="auto-digits-auto",
                                 storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}").trials
    assert trial.state.name == "PRUNED"
    # the note gives val to 4 decimals: the drop in units of 0.001 to within 0.05 of one
    assert trial.constraints == {"max_metric_drop": pytest.approx((baseline - value - 0.001) / 0.001, abs=0.051)}


@pytest.mark.slow
def test_without_slack_the_same_candidate_runs_to_the_end(tmp_path):
    result, _ = _stopping_search(tmp_path, slack=0.0)
    assert len(result.records) == 2
    assert (tmp_path / "out" / "trials" / "1" / "metrics.json").exists()


@pytest.mark.slow
def test_until_a_candidate_has_finished_none_is_stopped(tmp_path):
    # the hopeless candidate alone: stopping it would leave the search with no model to save
    result, _ = _stopping_search(tmp_path, slack=1.0, points=(HOPELESS,))
    assert [r["number"] for r in result.records] == [0] and not result.feasible
    assert (tmp_path / "out" / "best" / "manifest.json").is_file()


@pytest.mark.slow
def test_a_candidate_proposed_again_is_not_run_again(tmp_path, monkeypatch):
    from torchslim.search import run_auto
    from torchslim.search import study as study_module

    point = {"width": 1.0, "structured": 0.0, "sparsity": 0.5, "kd": False, "quant": "none", "epochs": 1}
    monkeypatch.setattr(study_module, "starting_points", lambda _d, _s: [point, dict(point)])
    lines: list[str] = []
    result = run_auto(_domain(tmp_path, {"max_size_bytes": 50}), tmp_path / "out", trials=2, threads=1,
                      settings=SETTINGS, log=lines.append)
    assert len(result.records) == 1 and result.trials == 1  # one record: the repeat is not a second candidate
    assert not (tmp_path / "out" / "trials" / "1").exists()
    with open(tmp_path / "out" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["state"], r["candidate"]) for r in rows] == [("COMPLETE", "sparse0.5 ft1")] * 2
    # (the first one's note says when it was timed on a busy machine, as a test run in parallel can be)
    assert rows[0]["note"] in ("", "timed on a busy machine or unsteadily: its latencies may be far off")
    assert rows[1]["note"] == "same candidate as trial 0"
    assert any(line.startswith("trial 1: sparse0.5 ft1 | the same candidate as trial 0") for line in lines)
    import optuna

    first, again = optuna.load_study(study_name="auto-digits-auto",
                                     storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}").trials
    assert again.values == first.values and again.constraints == first.constraints


def _training_losses(out, domain):
    """Training digits the search's baseline gets right and its trial 0 does not."""
    import json

    from torchslim.artifact import load_artifact
    from torchslim.data import load_splits
    from torchslim.search.noise import correct_per_sample

    baseline = next(p.parent / "checkpoint" / "current" for p in (out / "baseline").glob("*/identity.json")
                    if "stages" not in json.loads(p.read_text()))
    train = load_splits(domain.data, base_dir=domain.base_dir, input_shape=(1, 8, 8)).train
    right = [correct_per_sample(load_artifact(a)[0], train, "accuracy") for a in (baseline, out / "trials/0/artifact")]
    return int((right[0] & ~right[1]).sum())


@pytest.mark.slow
def test_the_drop_margin_is_how_many_standard_errors_the_metric_constraint_adds(tmp_path):
    from torchslim.search import run_auto

    domain = _domain(tmp_path, {"max_metric_drop": 0.5})  # nothing is stopped: the first candidate finishes
    judged = {}
    for margin in (0.0, 3.0):
        settings = dataclasses.replace(SETTINGS, drop_margin=margin, stop_slack=0.0)
        result = run_auto(domain, tmp_path / f"out{margin}", trials=1, threads=1, settings=settings,
                          log=lambda _m: None)
        record = result.records[0]
        drop = record["baseline_val_value"] - record["val_value"]
        assert record["val_constraints"]["max_metric_drop"]["measured"] == pytest.approx(drop)  # as run reports
        judged[margin] = (record["margin_constraints"]["max_metric_drop"]["measured"], drop, record["val_drop_stderr"])
        # the paired counts behind the drop (180 validation digits): losses less gains is the drop's sample count
        losses, gains = record["val_losses"], record["val_gains"]
        assert losses - gains == round(drop * 180)
        # and the losses on the training inputs (all 1,257 training digits: fewer than TRAIN_SAMPLES), counted
        # again here from the saved baseline and candidate
        assert record["train_samples"] == 1257
        assert record["train_losses"] == _training_losses(tmp_path / f"out{margin}", domain)
        if margin == 0.0:  # no preference: no loss figures, so no first tier
            assert "loss_constraints" not in record
        else:  # the larger of the two shares lost, each with three of its standard errors
            bounds = [b / n + 3 * math.sqrt(b / n * (1 - b / n) / n)
                      for b, n in ((losses, 180), (record["train_losses"], 1257))]
            assert record["loss_constraints"]["max_metric_drop"]["measured"] == pytest.approx(max(bounds))
    (zero, drop0, se0), (three, drop3, se3) = judged[0.0], judged[3.0]
    assert (drop0, se0) == (drop3, se3) and se0 > 0  # the same candidate, which disagrees with the baseline
    assert zero == pytest.approx(drop0) and three == pytest.approx(drop0 + 3 * se0)


def test_processes_sampling_at_the_same_moment_draw_different_candidates():
    """Each trial's sampler is seeded by the trial's number: two processes asking at once (same history, same
    --seed) propose different candidates, and one process proposes the same sequence for the same seed."""
    import optuna

    from torchslim.search.sampler import starting_points_first

    def sampler():
        return starting_points_first(lambda n: optuna.samplers.TPESampler(seed=3 + n), [{"x": 0.5}])

    def draws(study, trials):
        return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(trials)]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, study_name="s", sampler=sampler())
    second = optuna.load_study(storage=storage, study_name="s", sampler=sampler())
    assert draws(first, 1) == [0.5]  # trial 0: the starting point, once
    a, b = draws(first, 1), draws(second, 1)  # trials 1 and 2, neither finished
    assert a != b
    alone = optuna.create_study(sampler=sampler())
    assert draws(alone, 3) == draws(optuna.create_study(sampler=sampler()), 3)


def test_a_rerun_of_an_interrupted_candidate_takes_no_starting_point():
    """A resumed search enqueues the interrupted candidate again (a new trial number): every starting point still
    runs, in order, as in a search never interrupted."""
    import optuna

    from torchslim.search.sampler import starting_points_first

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=starting_points_first(lambda n: optuna.samplers.RandomSampler(seed=n),
                                                              [{"x": 0.1}, {"x": 0.2}, {"x": 0.3}]))
    first = study.ask()
    assert first.suggest_float("x", 0.0, 1.0) == 0.1
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # its process died
    study.enqueue_trial({"x": 0.1}, user_attrs={"rerun_of": 0})  # as the resumed search does
    xs = [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(4)]
    assert xs[:3] == [0.1, 0.2, 0.3] and xs[3] not in (0.1, 0.2, 0.3)


def test_a_baseline_at_chance_is_warned_of(tmp_path):
    from torchslim.search.advice import baseline_at_chance

    domain = _domain(tmp_path, {"max_metric_drop": 0.05})
    (line,) = baseline_at_chance(domain, 3, {"baseline_val_value": 0.357, "baseline_value": 0.333})
    assert line.startswith("the baseline scores 0.3570 on the validation split, about chance (0.3333 for 3 classes)")
    assert baseline_at_chance(domain, 3, {"baseline_val_value": 0.41, "baseline_value": 0.4}) == []  # 1/10 of the way
    assert baseline_at_chance(domain, 3, None) == []
    domain = domain.model_copy(update={"model": domain.model.model_copy(
        update={"weights": "w.safetensors"})})  # the search does not train given weights: advise on them
    (line,) = baseline_at_chance(domain, 3, {"baseline_val_value": 0.357, "baseline_value": 0.333})
    assert line.startswith("the baseline, the domain's model.weights (w.safetensors), scores 0.3570")
    assert "give the weights of a trained model" in line and "train it longer" not in line


def test_what_run_would_warn_of_the_data_is_said_before_the_search_and_with_its_result(tmp_path):
    import numpy as np

    from torchslim.search import AutoSearch

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", x=rng.normal(size=(200, 4)) * [1, 1, 1, 1000], y=np.arange(200) % 2)
    domain = load_domain({**DOMAIN, "task": "tabular-classification", "data": {"source": f"npz:{tmp_path}/wide.npz"},
                          "model": {"name": "mlp"}, "constraints": {"max_metric_drop": 0.05}})
    said = []
    search = AutoSearch(domain, tmp_path / "out", log=said.append)
    search.check()  # no training: the data and the model's fit, as run checks them
    (warning,) = search._data_warnings
    assert warning.startswith("data.source: input features differ in scale: feature 3's standard deviation")
    assert said == [f"warning: {warning}"]


@pytest.mark.slow
def test_a_best_the_validation_split_cannot_confirm_is_warned_of(tmp_path, monkeypatch):
    from torchslim.search import study as study_module

    seen = []

    def unconfirmed(best, val_samples, best_dir):
        seen.append((best["number"], val_samples, best_dir))
        return "the line"

    monkeypatch.setattr(study_module, "unconfirmed_line", unconfirmed)
    result, _ = _stopping_search(tmp_path, slack=1.0, points=(QUICK,))
    # the chosen candidate, the validation split's 180 digits and where best/ is
    assert seen == [(0, 180, str(tmp_path / "out" / "best"))]
    assert result.warnings == ["the line"]


def test_a_baseline_that_candidates_beat_by_far_is_warned_of(tmp_path):
    from torchslim.search.advice import baseline_surpassed, folds_from_given_weights

    domain = _domain(tmp_path, {"max_metric_drop": 0.05})

    def record(number, gains, losses):
        return {"number": number, "brief": f"ft{number}", "val_value": 0.5 + (gains - losses) / 144,
                "baseline_val_value": 0.5, "val_gains": gains, "val_losses": losses}

    # 12 gained and 1 lost: a net 11 against 3 x sqrt(13) = 10.8 (a sign test under no true difference)
    (line,) = baseline_surpassed(domain, [record(0, 3, 0), record(1, 12, 1), record(2, 11, 1)])
    assert line == ("trial 1 (ft1) scores 0.5764 on the validation split, the baseline 0.5000 (12 samples gained, 1 "
                    "lost): the baseline looks undertrained, and every candidate's drop is measured from it; train "
                    "it longer (--baseline-epochs, --lr)")
    # 11 and 1: a net 10, within 3 x sqrt(12) = 10.4 of chance
    assert baseline_surpassed(domain, [record(0, 3, 0), record(2, 11, 1)]) == []
    assert baseline_surpassed(domain, []) == []
    assert folds_from_given_weights(domain, [{"cv": {"met": True}}]) == []  # the search trained its baseline
    domain = domain.model_copy(update={"model": domain.model.model_copy(update={"weights": "w.safetensors"})})
    (line,) = baseline_surpassed(domain, [record(1, 12, 1)])
    assert line.endswith("give the domain the weights of a better-trained model (w.safetensors now)")
    # cross-validation from given weights: said once any candidate ran on the folds (not one judged as a twin)
    assert folds_from_given_weights(domain, [{"cv": {"met": True, "like": 3}}]) == []
    (line,) = folds_from_given_weights(domain, [{"cv": {"met": True}}])
    assert line.startswith("cross-validation started every fold from the domain's model.weights (w.safetensors)")
