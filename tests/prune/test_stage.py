"""The ``prune`` recipe stage: parsing, checks before training, and short end-to-end runs through the runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from torchslim._errors import ConfigError
from torchslim.artifact import load_artifact, load_state
from torchslim.prune import MagnitudeConfig
from torchslim.prune.sensitivity import SensitivityTable, overrides_from_sensitivity
from torchslim.prune.stage import PruneStage, SensitivitySpec, parse_stage
from torchslim.recipe import load_recipe
from torchslim.runner import run_recipe

ROOT = Path(__file__).resolve().parents[2]
DIGITS = str(ROOT / "domains" / "digits.yaml")
LENET5_DOMAIN = {"name": "digits-lenet5", "task": "image-classification",
                 "data": {"source": "digits", "test_fraction": 0.2, "val_fraction": 0.1, "seed": 0},
                 "model": {"name": "lenet5"}, "metric": "accuracy"}
WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")  # LeNet-300-100: 19200 + 30000 + 1000 = 50200 weights


def write_recipe(tmp_path: Path, stages: list, domain=DIGITS, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"domain": domain, "seed": 0, "stages": stages}))
    return path


def quiet(_msg: str) -> None:
    pass


# the end-to-end runs train for a few seconds; one thread is fastest on small shared machines
pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupted(Exception):
    """Stands in for a killed process."""


# --- parsing ---------------------------------------------------------------------------------------------------


def test_parse_builds_the_method_config_and_sensitivity():
    stage = parse_stage({"method": "magnitude", "sparsity": 0.9, "scope": "global",
                         "finetune": {"epochs": 4, "lr": 1e-3, "batch_size": 32},
                         "sensitivity": {"sparsities": [0.5, 0.9], "max_drop": 0.02}})
    assert isinstance(stage.config, MagnitudeConfig) and stage.config.sparsity == 0.9
    assert stage.config.finetune.batch_size == 32
    assert stage.sensitivity == SensitivitySpec((0.5, 0.9), 0.02)
    assert parse_stage({"method": "structured", "sparsity": 0.5}).sensitivity is None


def test_model_dump_round_trips_through_json():
    stage = parse_stage({"method": "structured", "sparsity": 0.5, "overrides": {"conv1": 0.25},
                         "schedule": {"kind": "polynomial", "steps": 3}, "sensitivity": {}})
    dumped = json.loads(json.dumps(stage.model_dump(mode="json")))
    assert dumped["method"] == "structured" and dumped["sensitivity"]["sparsities"] == [0.5, 0.7, 0.9, 0.95]
    assert parse_stage(dumped) == stage


@pytest.mark.parametrize("body, field", [
    ({"method": "magnitude", "sparsity": 1.2}, "stages[1].prune.sparsity"),
    ({"method": "magnitude", "sparsity": -0.1}, "stages[1].prune.sparsity"),
    ({"method": "magnitude", "sparsity": 0.5, "ignore": ["fc1", ""]}, "stages[1].prune.ignore[1]"),
    ({"method": "magnitude", "sparsity": 0.5, "finetune": {"epochs": 2, "lr": 0}}, "stages[1].prune.finetune.lr"),
    ({"method": "structured", "sparsity": 0.5, "sensitivity": {"max_drop": -1}},
     "stages[1].prune.sensitivity.max_drop"),
    ({"method": "structured", "sparsity": 0.5, "sensitivity": {"sparsities": [0.5, 1.0]}},
     "stages[1].prune.sensitivity.sparsities[1]"),
    ({"method": "structured", "sparsity": 0.5, "sensitivity": {"steps": 3}}, "stages[1].prune.sensitivity.steps"),
    ({"method": "activation", "threshold": 0.1, "sensitivity": {}}, "stages[1].prune.sensitivity"),
    ({"method": "pruney"}, "stages[1].prune.method"),
    ([0.5], "stages[1].prune"),
])
def test_parse_errors_name_the_field_in_the_recipe(body, field):
    with pytest.raises(ConfigError) as err:
        parse_stage(body, prefix="stages[1].prune", source="r.yaml")
    assert err.value.field == field and err.value.source == "r.yaml"
    assert str(err.value).startswith(f"r.yaml: {field}: ")


@pytest.mark.parametrize("recipe", ["prune_magnitude.yaml", "structured_lenet5.yaml"])
def test_shipped_recipes_load_with_a_prune_stage(recipe):
    loaded = load_recipe(ROOT / "recipes" / "digits" / recipe)
    assert [s.name for s in loaded.stages] == ["train", "prune"]
    assert isinstance(loaded.stages[1].config, PruneStage)


# --- bad input through the CLI: one line, exit 2, nothing written ----------------------------------------------


@pytest.mark.parametrize("stage, domain, field", [
    ({"method": "magnitude", "sparsity": 1.0}, DIGITS, "stages[1].prune.sparsity"),
    ({"method": "magnitude", "sparsity": 0.5, "ignore": ["fc1", "classifier"]}, DIGITS, "stages[1].prune.ignore[1]"),
    ({"method": "magnitude", "sparsity": 0.5, "overrides": {"fc9": 0.5}}, DIGITS, "stages[1].prune.overrides.fc9"),
    # 0.9995 of fc3's 1000 weights rounds to all of them
    ({"method": "magnitude", "sparsity": 0.9995}, DIGITS, "stages[1].prune.sparsity"),
    # 0.99 of conv1's 32 channels rounds to 32
    ({"method": "structured", "sparsity": 0.5, "overrides": {"conv1": 0.99}}, LENET5_DOMAIN,
     "stages[1].prune.overrides.conv1"),
    ({"method": "activation", "threshold": 1.5}, DIGITS, "stages[1].prune.threshold"),
])
def test_cli_rejects_bad_prune_stage_before_writing(tmp_path, cli, stage, domain, field):
    recipe = write_recipe(tmp_path, [{"train": {"epochs": 1, "lr": 1e-3}}, {"prune": stage}], domain)
    out = tmp_path / "out"
    proc = cli("run", str(recipe), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {recipe}: {field}: "), proc.stderr
    assert not out.exists()


def test_an_override_may_name_attentions_in_projection(tmp_path, cli):
    """Magnitude pruning makes attention's in-projection a layer (``<attention>.in_proj``): the check knows it."""
    domain = str(ROOT / "domains" / "digits_transformer.yaml")
    good = write_recipe(tmp_path, [{"prune": {"method": "magnitude", "sparsity": 0.5,
                                              "overrides": {"encoder.layers.0.self_attn.in_proj": 0.8}}}], domain)
    proc = cli("check", good)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "bad").mkdir()
    bad = write_recipe(tmp_path / "bad", [{"prune": {"method": "magnitude", "sparsity": 0.5,
                                                     "overrides": {"encoder.layers.0.self_attn.in_projection": 0.8}}}],
                       domain)
    proc = cli("check", bad)
    assert proc.returncode == 2 and "stages[0].prune.overrides.encoder.layers.0.self_attn.in_projection: matches no " \
        "module" in proc.stderr


# --- end to end ------------------------------------------------------------------------------------------------


def test_magnitude_global_sparsity_is_exact_and_survives_later_training(tmp_path):
    prune = {"method": "magnitude", "sparsity": 0.9, "scope": "global",
             "schedule": {"kind": "polynomial", "steps": 2}, "finetune": {"epochs": 8, "lr": 1e-3, "batch_size": 32}}
    recipe = write_recipe(tmp_path, [{"train": {"epochs": 15, "lr": 1e-3, "batch_size": 32}}, {"prune": prune},
                                     {"train": {"epochs": 3, "lr": 1e-3}}])
    metrics = run_recipe(load_recipe(recipe), tmp_path / "out", log=quiet)
    record = metrics["stages"][1]
    assert record["method"] == "magnitude" and record["sparsity"] == pytest.approx(45180 / 50200, abs=1e-12)
    assert record["params_before"] == record["params_after"] == 50610
    assert record["masked_layers"] == ["fc1", "fc2", "fc3"]
    assert record["nonzero_after"] == 50610 - 45180  # biases are not pruned
    state = load_state(tmp_path / "out" / "artifact")
    # After the fine-tune and three more epochs of Adam, exactly the pruned 90% are still zero.
    assert sum(int((state[k] == 0).sum()) for k in WEIGHTS) == 45180
    assert metrics["nonzero_params"] == 50610 - 45180
    assert record["val_metric"] >= metrics["stages"][0]["val_metric"] - 0.05
    assert metrics["value"] >= metrics["baseline_value"] - 0.03


def test_structured_artifact_reloads_smaller_and_eval_reproduces(tmp_path, cli):
    prune = {"method": "structured", "sparsity": 0.5, "finetune": {"epochs": 3, "lr": 5e-4, "augment": "shift"}}
    domain_file = tmp_path / "lenet5.yaml"
    domain_file.write_text(yaml.safe_dump(LENET5_DOMAIN))
    recipe = write_recipe(tmp_path, [{"train": {"epochs": 6, "lr": 2e-3, "augment": "shift"}}, {"prune": prune}],
                          domain=str(domain_file))
    out = tmp_path / "out"
    metrics = run_recipe(load_recipe(recipe), out, log=quiet)
    record = metrics["stages"][1]
    # conv1 1->16, conv2 16->32, fc1 128->128, fc2 128->10: 160 + 4640 + 16512 + 1290
    assert record["params_before"] == 87178 and record["params_after"] == 22602
    assert metrics["params"] == 22602 and metrics["baseline_params"] == 87178
    assert record["removed_units"] == ["conv1 16/32", "conv2 32/64", "fc1 128/256"]
    assert "latency_ratio_batch_64" not in record  # the run reports it once, for the whole run
    # the median of the side-by-side rounds' ratios (evaluate.speedup), not the ratio of the two medians
    assert metrics["latency_ratio_batch_64"] == metrics["latency_spread"]["batch_64"]["ratio"]
    model, _ = load_artifact(out / "artifact")
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.in_features) == (16, 32, 128)
    assert metrics["value"] > 0.85
    proc = cli("eval", str(out / "artifact"), "--domain", str(domain_file), "--json")
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads(proc.stdout)
    assert evaluated["value"] == metrics["value"] and evaluated["params"] == 22602


def test_sensitivity_sets_overrides_except_explicit_ones(tmp_path):
    prune = {"method": "magnitude", "sparsity": 0.5, "overrides": {"fc3": 0.3},
             "sensitivity": {"sparsities": [0.5, 0.9, 0.99], "max_drop": 0.02}}
    recipe = write_recipe(tmp_path, [{"train": {"epochs": 10, "lr": 1e-3, "batch_size": 32}}, {"prune": prune}])
    metrics = run_recipe(load_recipe(recipe), tmp_path / "out", log=quiet)
    record = metrics["stages"][1]
    rows = tuple((r["layer"], r["sparsity"], r["val_metric"]) for r in record["sensitivity"])
    assert [r[:2] for r in rows] == [(n, s) for n in ("fc1", "fc2", "fc3") for s in (0.5, 0.9, 0.99)]
    chosen = overrides_from_sensitivity(SensitivityTable(record["sensitivity_baseline"], rows), 0.02)
    assert record["sensitivity_overrides"] == [f"{n} {chosen[n]:g}" for n in ("fc1", "fc2")]
    achieved = dict(item.split() for item in record["layer_sparsity"])
    sizes = {"fc1": 19200, "fc2": 30000, "fc3": 1000}
    for name, target in {"fc1": chosen["fc1"], "fc2": chosen["fc2"], "fc3": 0.3}.items():
        assert float(achieved[name]) == pytest.approx(round(target * sizes[name]) / sizes[name], abs=1e-4)


def test_interrupted_finetune_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import torchslim.runner as runner

    prune = {"method": "magnitude", "sparsity": 0.8, "scope": "global",
             "schedule": {"kind": "polynomial", "steps": 2}, "finetune": {"epochs": 6, "lr": 5e-4}}
    recipe = write_recipe(tmp_path, [{"train": {"epochs": 4, "lr": 1e-3}}, {"prune": prune}])
    run_recipe(load_recipe(recipe), tmp_path / "whole", log=quiet)

    real_fit = runner.fit
    seen: list[str] = []

    def interrupted_fit(model, train, val, cfg, *, desc, after_step=None, **kwargs):
        steps = [0]
        seen.append(desc)

        def hook():
            if after_step is not None:
                after_step()
            steps[0] += 1
            if desc == "prune finetune 2 of 2" and steps[0] == 20 * 1 + 10:  # 20 steps an epoch: mid epoch 2
                raise Interrupted
        return real_fit(model, train, val, cfg, desc=desc, after_step=hook, **kwargs)

    monkeypatch.setattr(runner, "fit", interrupted_fit)
    with pytest.raises(Interrupted):
        run_recipe(load_recipe(recipe), tmp_path / "cut", log=quiet)
    assert seen == ["train", "prune finetune 1 of 2", "prune finetune 2 of 2"]
    monkeypatch.setattr(runner, "fit", real_fit)
    run_recipe(load_recipe(recipe), tmp_path / "cut", resume=True, log=quiet)

    whole = load_state(tmp_path / "whole" / "artifact")
    resumed = load_state(tmp_path / "cut" / "artifact")
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_masks_survive_a_resume_into_a_later_training_stage(tmp_path, monkeypatch):
    """Prune (magnitude), then train again; interrupt the second training and resume: the zeros stay zeros."""
    import torchslim.runner as runner

    prune = {"method": "magnitude", "sparsity": 0.8, "scope": "layer"}
    recipe = write_recipe(tmp_path, [{"train": {"epochs": 3, "lr": 1e-3}}, {"prune": prune},
                                     {"train": {"epochs": 3, "lr": 1e-3}}])
    real_fit = runner.fit

    def interrupted_fit(model, train, val, cfg, *, desc, after_step=None, **kwargs):
        steps = [0]

        def hook():
            if after_step is not None:
                after_step()
            steps[0] += 1
            if kwargs.get("seed") == 2 and steps[0] == 30:  # the third stage (seed + stage index), mid epoch 2
                raise Interrupted
        return real_fit(model, train, val, cfg, desc=desc, after_step=hook, **kwargs)

    monkeypatch.setattr(runner, "fit", interrupted_fit)
    with pytest.raises(Interrupted):
        run_recipe(load_recipe(recipe), tmp_path / "cut", log=quiet)
    monkeypatch.setattr(runner, "fit", real_fit)
    metrics = run_recipe(load_recipe(recipe), tmp_path / "cut", resume=True, log=quiet)
    state = load_state(tmp_path / "cut" / "artifact")
    for name in ("fc1", "fc2", "fc3"):
        weight = state[f"{name}.weight"]
        assert int((weight == 0).sum()) == round(0.8 * weight.numel()), name
    assert metrics["nonzero_params"] < 0.25 * metrics["params"]


def test_the_log_line_gives_the_units_removed_not_the_asked_sparsity():
    from types import SimpleNamespace

    from torch import nn

    from torchslim.prune.stage import _units_removed

    model = nn.Sequential(nn.Linear(4, 13), nn.Linear(13, 8), nn.Linear(8, 2))  # as left: 13 and 8 units kept
    layer = lambda name, removed: SimpleNamespace(name=name, removed=tuple(range(removed)))  # noqa: E731
    # per-layer caps (sensitivity) kept the first layer at 3 of 16 units, the second at 8 of 16
    assert _units_removed(SimpleNamespace(layers=[layer("0", 3), layer("1", 8), layer("2", 0)]), model) == (
        "0.19-0.5 of units removed per layer")
    assert _units_removed(SimpleNamespace(layers=[layer("1", 8)]), model) == "0.5 of units removed"
    assert _units_removed(SimpleNamespace(layers=[layer("2", 0)]), model) == "no unit removed"
