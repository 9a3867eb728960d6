"""The search space → recipe mapping, without Optuna: each parameter becomes the stage a user would write."""

from __future__ import annotations

import pytest

from torchslim.domain import load_domain
from torchslim.search.space import (DEEP_COMPRESSION, INT8, SearchSettings, describe, quant_methods,
                                    recipe_from_params, starting_points, suggest_params)

SETTINGS = SearchSettings(baseline_epochs=7, max_epochs=5, lr=0.001, batch_size=32)


def _domain(runtime="torch", model=None, constraints=None):
    return load_domain({"name": "d", "task": "image-classification", "data": {"source": "digits"},
                        "model": model or {"name": "lenet300_100", "kwargs": {"width": 0.5}},
                        "constraints": constraints or {"max_size_bytes": 1000}, "runtime": runtime})


def test_everything_on_gives_the_stages_in_order():
    params = {"width": 0.5, "structured": 0.3, "sparsity": 0.9, "kd": True, "quant": "kmeans", "bits": 3,
              "epochs": 4}
    recipe = recipe_from_params(params, _domain(), "/abs/domain.yaml", SETTINGS, seed=11)
    assert recipe["domain"] == "/abs/domain.yaml" and recipe["seed"] == 11
    names = [next(iter(s)) for s in recipe["stages"]]
    assert names == ["train", "distill", "prune", "prune", "distill", "quantize", "distill"]
    train, student, structured, magnitude, kd, quant, kd_after = (next(iter(s.values())) for s in recipe["stages"])
    assert train == {"epochs": 7, "lr": 0.001, "batch_size": 32}
    # the student's width multiplies the domain's own width: 0.5 * 0.5
    assert student["student"] == {"name": "lenet300_100", "kwargs": {"width": 0.25}}
    # the student gets twice the baseline's training length at 10x its rate, whatever the fine-tune budget
    assert (student["epochs"], student["lr"], student["augment"]) == (14, 0.01, "none")
    assert structured["method"] == "structured" and structured["sparsity"] == 0.3
    # pruning's fine-tuning ends on the moving average of its weights
    assert structured["finetune"] == {"epochs": 4, "lr": 0.001, "batch_size": 32, "ema": 0.99}
    assert magnitude["finetune"] == structured["finetune"]
    assert magnitude["sparsity"] == 0.9 and magnitude["schedule"] == {"kind": "polynomial", "steps": 3}
    # after structured pruning a global threshold could empty a layer (which the stage refuses): per layer
    assert magnitude["scope"] == "layer"
    alone = recipe_from_params({**params, "structured": 0.0}, _domain(), "d", SETTINGS, seed=11)["stages"]
    assert [s["prune"]["scope"] for s in alone if "prune" in s] == ["global"]
    assert kd["teacher"] == "baseline" and "student" not in kd
    assert quant == {"method": "kmeans", "bits": 3, "finetune": {"epochs": 4, "lr": 0.0001}}
    # the centroids distilled too, at the k-means fine-tune's rate
    assert kd_after == {"teacher": "baseline", "temperature": 4.0, "alpha": 0.9, "epochs": 4, "lr": 0.0001,
                        "batch_size": 32, "augment": "none"}
    assert describe(params) == "w0.5 struct0.3 sparse0.9 kd kmeans3 ft4"
    weight_only = recipe_from_params({**params, "quant": "weight"}, _domain(), "d", SETTINGS, seed=11)["stages"]
    assert [next(iter(s)) for s in weight_only][-2:] == ["distill", "quantize"]  # no fine-tune after weight-only


def test_distillation_shifts_spatial_inputs_only():
    from torchslim.search.space import settings_for_data

    assert settings_for_data(SETTINGS, (1, 8, 8)).augment == "shift"
    assert settings_for_data(SETTINGS, (1, 40)).augment == "shift"
    assert settings_for_data(SETTINGS, (64,)).augment == "none"
    given = SearchSettings(augment="mixup")
    assert settings_for_data(given, (1, 8, 8)).augment == "mixup"  # a choice made is kept
    params = {"width": 0.5, "kd": True, "sparsity": 0.5, "epochs": 2}
    stages = recipe_from_params(params, _domain(), "d", settings_for_data(SETTINGS, (1, 8, 8)), 0)["stages"]
    assert [s["distill"]["augment"] for s in stages if "distill" in s] == ["shift", "shift"]


def test_everything_off_is_the_baseline_alone():
    params = {"width": 1.0, "structured": 0.0, "sparsity": 0.0, "kd": False, "quant": "none", "epochs": 1}
    recipe = recipe_from_params(params, _domain(), "d.yaml", SETTINGS, seed=0)
    assert recipe["stages"] == [{"train": {"epochs": 7, "lr": 0.001, "batch_size": 32}}]
    assert describe(params) == "ft1"


def test_one_epoch_prunes_in_one_step_and_int8_methods_are_plain():
    params = {"sparsity": 0.5, "quant": "static", "epochs": 1}
    stages = recipe_from_params(params, _domain("onnxruntime"), "d.yaml", SETTINGS, 0)["stages"]
    assert stages[1]["prune"]["schedule"] == {"kind": "oneshot"}
    assert stages[2] == {"quantize": {"method": "static", "bits": 8, "granularity": "channel",
                                      "calibration": {"batches": 8}}}
    dynamic = recipe_from_params({"quant": "dynamic", "epochs": 1}, _domain("onnxruntime"), "d", SETTINGS, 0)
    assert dynamic["stages"][-1] == {"quantize": {"method": "dynamic", "bits": 8}}


def test_int8_is_offered_only_where_onnxruntime_runs_the_model():
    assert quant_methods(_domain("torch")) == ("none", "kmeans", "weight")
    assert quant_methods(_domain("onnxruntime")) == ("none", "kmeans", "weight", "static", "dynamic")


def test_a_factory_model_is_not_given_a_width():
    class FixedTrial:  # answers every question with its first choice, as a stand-in for an Optuna trial
        asked: list[str] = []

        def suggest_categorical(self, name, choices):
            self.asked.append(name)
            return choices[-1]

        def suggest_int(self, name, low, high):
            self.asked.append(name)
            return high

    domain = _domain(model={"factory": "m:build"})
    trial = FixedTrial()
    params = suggest_params(trial, domain, SETTINGS)
    assert "width" not in trial.asked and params["width"] == 1.0 and params["epochs"] == 5
    with pytest.raises(ValueError, match="width"):
        recipe_from_params({"width": 0.5, "epochs": 1}, domain, "d", SETTINGS, 0)


def test_a_sensitivity_allocation_caps_each_pruning_stage_at_its_sparsity():
    domain = _domain(constraints={"max_metric_drop": 0.02})
    params = {"structured": 0.3, "sparsity": 0.9, "kd": False, "quant": "none", "epochs": 4}
    stage = recipe_from_params({**params, "allocation": "stage"}, domain, "d", SETTINGS, 0)["stages"]
    sens = recipe_from_params({**params, "allocation": "sensitivity"}, domain, "d", SETTINGS, 0)["stages"]
    structured, magnitude = sens[1]["prune"], sens[2]["prune"]
    # the grid: the method's choices up to the candidate's sparsity; the bound: half the domain's 0.02
    assert structured.pop("sensitivity") == {"sparsities": [0.1, 0.2, 0.3], "max_drop": 0.01}
    assert magnitude.pop("sensitivity") == {"sparsities": [0.5, 0.6, 0.7, 0.8, 0.9], "max_drop": 0.01}
    assert sens == stage and "sensitivity" not in str(stage)  # otherwise the same stages as the stage's own
    assert params == {"structured": 0.3, "sparsity": 0.9, "kd": False, "quant": "none", "epochs": 4}
    # a cap between two choices is in the grid too; the smallest choice alone when it is the cap
    odd = recipe_from_params({"sparsity": 0.65, "allocation": "sensitivity", "epochs": 1}, domain, "d", SETTINGS, 0)
    assert odd["stages"][1]["prune"]["sensitivity"]["sparsities"] == [0.5, 0.6, 0.65]
    low = recipe_from_params({"structured": 0.1, "allocation": "sensitivity", "epochs": 1}, domain, "d", SETTINGS, 0)
    assert low["stages"][1]["prune"]["sensitivity"]["sparsities"] == [0.1]
    assert describe({**params, "allocation": "sensitivity"}) == "struct0.3/sens sparse0.9/sens ft4"
    assert describe({**params, "allocation": "stage"}) == "struct0.3 sparse0.9 ft4"


class ScriptedTrial:
    """A stand-in for an Optuna trial: answers from ``answers``, else the first choice; records what was asked."""

    def __init__(self, **answers):
        self.answers, self.asked = answers, []

    def suggest_categorical(self, name, choices):
        self.asked.append(name)
        return self.answers.get(name, choices[0])

    def suggest_int(self, name, low, high):
        self.asked.append(name)
        return self.answers.get(name, low)


@pytest.mark.parametrize("constraints, structured, sparsity, asked", [
    ({"max_metric_drop": 0.01}, 0.0, 0.9, True),
    ({"max_metric_drop": 0.01}, 0.3, 0.0, True),
    ({"max_metric_drop": 0.01}, 0.0, 0.0, False),  # nothing is pruned
    ({"max_size_bytes": 1000}, 0.3, 0.9, False),  # no drop bound to take a share of
    ({"min_metric": 0.9}, 0.3, 0.9, False),
])
def test_the_allocation_is_asked_only_when_pruning_under_a_drop_bound(constraints, structured, sparsity, asked):
    domain = _domain(constraints=constraints)
    trial = ScriptedTrial(structured=structured, sparsity=sparsity, allocation="sensitivity")
    params = suggest_params(trial, domain, SETTINGS)
    assert ("allocation" in trial.asked) == asked and params.get("allocation") == ("sensitivity" if asked else None)
    if not asked and (structured or sparsity):
        with pytest.raises(ValueError, match="allocation: sensitivity needs the domain's constraints.max_metric_drop"):
            recipe_from_params({**params, "allocation": "sensitivity"}, domain, "d", SETTINGS, 0)
    with pytest.raises(ValueError, match="allocation: must be one of stage, sensitivity"):
        recipe_from_params({**params, "allocation": "uniform"}, domain, "d", SETTINGS, 0)


def test_starting_points_prune_by_the_stage_and_are_the_parameters_their_trials_get():
    domain = _domain("onnxruntime", constraints={"max_metric_drop": 0.01})
    points = starting_points(domain, SETTINGS)
    assert [p.get("allocation") for p in points] == ["stage"] * 3 + [None, None, None, "stage"]
    assert [{k: v for k, v in p.items() if k not in ("allocation", "epochs")} for p in points] == \
        [*DEEP_COMPRESSION, *INT8]
    for point in points:  # the sampler answers a starting point's trial from the point: the same keys come back
        assert suggest_params(ScriptedTrial(**point), domain, SETTINGS) == point
    assert all("allocation" not in p for p in starting_points(_domain("onnxruntime"), SETTINGS))


@pytest.mark.usefixtures("one_thread")
def test_a_sensitivity_candidate_runs_and_lowers_fragile_layers_below_its_cap(tmp_path):
    """Through the runner on digits: each layer gets the largest grid sparsity whose one-layer drop on the
    validation split is within half the domain's bound, and is pruned to exactly that."""
    import yaml

    from torchslim.prune.sensitivity import SensitivityTable, overrides_from_sensitivity
    from torchslim.recipe import load_recipe
    from torchslim.runner import run_recipe

    domain = {"name": "digits-sens", "task": "image-classification",
              "data": {"source": "digits", "test_fraction": 0.2, "val_fraction": 0.1, "seed": 0},
              "model": {"name": "lenet300_100", "kwargs": {"hidden1": 64, "hidden2": 32}}, "metric": "accuracy",
              "constraints": {"max_metric_drop": 0.1}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(domain))
    params = {"sparsity": 0.95, "allocation": "sensitivity", "kd": False, "quant": "none", "epochs": 2}
    settings = SearchSettings(baseline_epochs=5, max_epochs=2)
    recipe = recipe_from_params(params, load_domain(tmp_path / "d.yaml"), str(tmp_path / "d.yaml"), settings, 0)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    record = run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", log=lambda _m: None)["stages"][1]
    rows = tuple((r["layer"], r["sparsity"], r["val_metric"]) for r in record["sensitivity"])
    assert [r[:2] for r in rows] == [(n, s) for n in ("fc1", "fc2", "fc3") for s in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)]
    chosen = overrides_from_sensitivity(SensitivityTable(record["sensitivity_baseline"], rows), 0.05)
    assert record["sensitivity_overrides"] == [f"{n} {chosen[n]:g}" for n in ("fc1", "fc2", "fc3")]
    assert min(chosen.values()) < 0.95  # a fragile layer kept more of its weights than the cap allows
    sizes = {"fc1": 64 * 64, "fc2": 32 * 64, "fc3": 10 * 32}
    achieved = {n: float(s) for n, s in (item.split() for item in record["layer_sparsity"])}
    assert achieved == {n: pytest.approx(round(chosen[n] * sizes[n]) / sizes[n], abs=1e-4) for n in sizes}


def test_every_recipe_the_space_can_make_is_a_valid_recipe(tmp_path):
    """Each quantization method and pruning choice passes the recipe's own validation."""
    import yaml

    from torchslim.recipe import load_recipe

    domain = _domain("onnxruntime", constraints={"max_metric_drop": 0.01})
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(domain.to_dict()))
    for quant, bits, allocation in (("kmeans", 2, "stage"), ("weight", 8, "sensitivity"), ("static", None, "stage"),
                                    ("dynamic", None, "sensitivity"), ("none", None, "sensitivity")):
        params = {"width": 0.75, "structured": 0.6, "sparsity": 0.95, "allocation": allocation, "kd": True,
                  "quant": quant, "bits": bits, "epochs": 2}
        recipe = recipe_from_params(params, domain, str(tmp_path / "d.yaml"), SETTINGS, 0)
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
        loaded = load_recipe(tmp_path / "r.yaml")
        assert len(loaded.stages) == len(recipe["stages"])


def test_importing_the_search_does_not_import_optuna():
    import subprocess
    import sys

    from cli_support import cli_env

    code = "import sys, torchslim, torchslim.cli, torchslim.search; print('optuna' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert proc.stdout.strip() == "False", proc.stderr


def test_recipes_are_written_without_anchors_and_a_failed_trial_says_why():
    """One fine-tune mapping shared by two stages is written out twice, as a user would; trials.csv gives a
    failed candidate's error."""
    import yaml

    from torchslim.search.outputs import csv_row, recipe_yaml

    params = {"width": 1.0, "structured": 0.5, "sparsity": 0.9, "kd": False, "quant": "none", "epochs": 2}
    recipe = recipe_from_params(params, _domain(), "d", SETTINGS, seed=0)
    text = recipe_yaml(recipe)
    assert "&" not in text and "*" not in text and yaml.safe_load(text) == recipe
    row = csv_row(3, "FAIL", None, error="stages[2].prune.sparsity: would zero every weight of layer(s) fc1",
                  brief=describe(params))
    assert row == {"number": 3, "state": "FAIL", "candidate": "struct0.5 sparse0.9 ft2",
                   "note": "failed: stages[2].prune.sparsity: would zero every weight of layer(s) fc1"}
