"""The search space → recipe mapping, without Optuna: each parameter becomes the stage a user would write."""

from __future__ import annotations

import pytest

from torchslim.domain import load_domain
from torchslim.search.space import SearchSettings, describe, quant_methods, recipe_from_params, suggest_params

SETTINGS = SearchSettings(baseline_epochs=7, max_epochs=5, lr=0.001, batch_size=32)


def _domain(runtime="torch", model=None):
    return load_domain({"name": "d", "task": "image-classification", "data": {"source": "digits"},
                        "model": model or {"name": "lenet300_100", "kwargs": {"width": 0.5}},
                        "constraints": {"max_size_bytes": 1000}, "runtime": runtime})


def test_everything_on_gives_the_stages_in_order():
    params = {"width": 0.5, "structured": 0.3, "sparsity": 0.9, "kd": True, "quant": "kmeans", "bits": 3,
              "epochs": 4}
    recipe = recipe_from_params(params, _domain(), "/abs/domain.yaml", SETTINGS, seed=11)
    assert recipe["domain"] == "/abs/domain.yaml" and recipe["seed"] == 11
    names = [next(iter(s)) for s in recipe["stages"]]
    assert names == ["train", "distill", "prune", "prune", "distill", "quantize"]
    train, student, structured, magnitude, kd, quant = (next(iter(s.values())) for s in recipe["stages"])
    assert train == {"epochs": 7, "lr": 0.001, "batch_size": 32}
    # the student's width multiplies the domain's own width: 0.5 * 0.5
    assert student["student"] == {"name": "lenet300_100", "kwargs": {"width": 0.25}}
    # the student gets twice the baseline's training length at 10x its rate, whatever the fine-tune budget
    assert (student["epochs"], student["lr"], student["augment"]) == (14, 0.01, "none")
    assert structured["method"] == "structured" and structured["sparsity"] == 0.3
    assert structured["finetune"] == {"epochs": 4, "lr": 0.001, "batch_size": 32}
    assert magnitude["sparsity"] == 0.9 and magnitude["schedule"] == {"kind": "polynomial", "steps": 3}
    assert kd["teacher"] == "baseline" and "student" not in kd
    assert quant == {"method": "kmeans", "bits": 3, "finetune": {"epochs": 4, "lr": 0.0001}}
    assert describe(params) == "w0.5 struct0.3 sparse0.9 kd kmeans3 ft4"


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


def test_every_recipe_the_space_can_make_is_a_valid_recipe(tmp_path):
    """Each quantization method and pruning choice passes the recipe's own validation."""
    import yaml

    from torchslim.recipe import load_recipe

    (tmp_path / "d.yaml").write_text(yaml.safe_dump(_domain("onnxruntime").to_dict()))
    for quant, bits in (("kmeans", 2), ("weight", 8), ("static", None), ("dynamic", None), ("none", None)):
        params = {"width": 0.75, "structured": 0.6, "sparsity": 0.95, "kd": True, "quant": quant, "bits": bits,
                  "epochs": 2}
        recipe = recipe_from_params(params, _domain("onnxruntime"), str(tmp_path / "d.yaml"), SETTINGS, 0)
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
