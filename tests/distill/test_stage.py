"""The ``distill`` recipe stage: parsing, checks before training, teacher/student wiring, CLI errors, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import torchslim.train
from torchslim._errors import ConfigError
from torchslim.artifact import load_artifact, load_state, save_artifact
from torchslim.cli import cli
from torchslim.distill.stage import parse_stage, student_spec
from torchslim.domain import load_domain
from torchslim.data import load_splits
from torchslim.models import LeNet300100
from torchslim.recipe import load_recipe
from torchslim.runner import run_recipe
from torchslim.stages import STAGES
from torchslim.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "domains" / "digits.yaml"
SHIPPED = ROOT / "recipes" / "mnist1d" / "distill_student.yaml"


def _lenet_params(h1: int, h2: int) -> int:
    return 64 * h1 + h1 + h1 * h2 + h2 + h2 * 10 + 10


def _write_recipe(path: Path, stages: str, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"domain: {DIGITS}\nseed: {seed}\nstages:\n{stages}")
    return path


# --- parsing ------------------------------------------------------------------------------------------------------

def test_stage_is_registered_as_compressing_with_check_and_parser():
    handler = STAGES["distill"]
    assert handler.compresses and handler.check is not None and handler.parser is parse_stage


@pytest.mark.parametrize("body, message", [
    ({"temperature": 0}, "r.yaml: stages[1].distill.temperature: must be > 0, got 0"),
    ({"temperature": -2.0}, "r.yaml: stages[1].distill.temperature: must be > 0, got -2.0"),
    ({"alpha": 1.5}, "r.yaml: stages[1].distill.alpha: must be in [0, 1], got 1.5"),
    ({"alpha": -0.1}, "r.yaml: stages[1].distill.alpha: must be in [0, 1], got -0.1"),
    ({"temprature": 2}, "r.yaml: stages[1].distill.temprature: unknown key; expected one of: alpha, "
                        "augment, batch_size, epochs, features, lr, regularization, student, teacher, temperature"),
    ({"augment": "flip"}, "r.yaml: stages[1].distill.augment: must be one of none, shift, mixup, shift+mixup, got 'flip'"),
    ({"student": {"nam": "lenet5"}}, "r.yaml: stages[1].distill.student.nam: unknown key; did you mean 'name'?"),
    ({"student": {"name": "lenet5", "kwargs": [1]}}, "r.yaml: stages[1].distill.student.kwargs: must be a mapping"),
    ({"student": {"kwargs": {}}}, "r.yaml: stages[1].distill.student: give exactly one of 'name' (a built-in "
                                  "model), 'factory' ('module:function') or 'path' (a sentence-transformers "
                                  "model directory)"),
    ({"features": [{"student": "fc1"}]}, "r.yaml: stages[1].distill.features[0].teacher: is required"),
])
def test_parse_errors_name_the_key(body, message):
    with pytest.raises(ConfigError) as err:
        parse_stage(body, prefix="stages[1].distill", source="r.yaml")
    assert str(err.value) == message


def test_parse_keeps_values_and_student_forms():
    cfg = parse_stage({"student": {"name": "lenet5", "kwargs": {"width": 0.5}}, "temperature": 3, "alpha": 0.25},
                      prefix="stages[0].distill", source=None)
    assert (cfg.temperature, cfg.alpha, cfg.teacher) == (3.0, 0.25, "baseline")
    assert cfg.model_dump(mode="json")["student"] == {"name": "lenet5", "kwargs": {"width": 0.5}}
    assert student_spec("lenet5").name == "lenet5" and student_spec(None) is None
    assert student_spec({"factory": "pkg.mod:make"}).factory == "pkg.mod:make"


# --- the CLI: bad input is one line naming the key, exit code 2 ---------------------------------------------------

@pytest.mark.parametrize("override, field", [
    ("stages.1.distill.temperature=0", "stages[1].distill.temperature: must be > 0"),
    ("stages.1.distill.temperature=-1", "stages[1].distill.temperature: must be > 0"),
    ("stages.1.distill.alpha=1.2", "stages[1].distill.alpha: must be in [0, 1]"),
    ("stages.1.distill.alpha=-0.5", "stages[1].distill.alpha: must be in [0, 1]"),
])
def test_cli_rejects_bad_values_of_the_shipped_recipe(tmp_path, override, field):
    result = CliRunner().invoke(cli, ["run", str(SHIPPED), "--out", str(tmp_path / "out"), "--set", override])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {SHIPPED}: {field}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("distill_body, message", [
    ("{student: {name: lenet300_100, kwargs: {num_classes: 5}}}",
     "stages[1].distill.student: output shape (N, 5) does not match the teacher's (N, 10)"),
    ("{student: {name: lenet5, kwargs: {num_classes: 5}}}",
     "stages[1].distill.student: output shape (N, 5) does not match the teacher's (N, 10)"),
    ("{student: {name: mnist1d_cnn}}",
     "stages[1].distill.student: forward pass on data of shape (64, 1, 8, 8) failed"),
    ("{student: {name: lenet_9000}}", "stages[1].distill.student.name: unknown model 'lenet_9000'"),
    ("{student: {name: lenet5, kwargs: {depth: 3}}}", "stages[1].distill.student.kwargs: got an unexpected keyword"),
    ("{student: {name: lenet5}, features: [{student: fc9, teacher: fc2}]}",
     "stages[1].distill.features[0].student: no module named 'fc9'; available: conv1, conv2, pool, fc1, fc2"),
    ("{features: [{student: fc1, teacher: conv1}]}",
     "stages[1].distill.features[0].teacher: no module named 'conv1'; available: fc1, fc2, fc3"),
    ("{teacher: ../nowhere/teacher}", "stages[1].distill.teacher: no torchslim artifact folder at "),
])
def test_cli_check_rejects_mismatched_models_before_training(tmp_path, distill_body, message):
    recipe = _write_recipe(tmp_path / "r.yaml", "  - train: {epochs: 1, lr: 0.001}\n"
                                                f"  - distill: {distill_body}\n")
    for command in (["check", str(recipe)], ["run", str(recipe), "--out", str(tmp_path / "out")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {recipe}: {message}")
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("later, message", [
    ("  - prune: {method: structured, sparsity: 0.5, overrides: {conv1: 0.25}}\n", None),
    ("  - prune: {method: structured, sparsity: 0.5, overrides: {fc3: 0.25}}\n",
     "stages[2].prune.overrides.fc3: matches no module of the model (modules: conv1, conv2, pool, fc1, fc2)"),
    # the student's fc2 against the baseline teacher's fc3 (LeNet-300-100): both (N, 10)
    ("  - distill: {features: [{student: fc2, teacher: fc3}], epochs: 1}\n", None),
    ("  - distill: {features: [{student: fc3, teacher: fc3}], epochs: 1}\n",
     "stages[2].distill.features[0].student: no module named 'fc3'; available: conv1, conv2, pool, fc1, fc2"),
])
def test_stages_after_a_new_student_are_checked_against_it(tmp_path, later, message):
    recipe = _write_recipe(tmp_path / "r.yaml", "  - train: {epochs: 1, lr: 0.001}\n"
                                                "  - distill: {student: {name: lenet5}, epochs: 1}\n" + later)
    result = CliRunner().invoke(cli, ["check", str(recipe)])
    if message is None:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {recipe}: {message}")


def test_shipped_recipe_checks_out():
    result = CliRunner().invoke(cli, ["check", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert "2 stage(s) (train, distill)" in result.stdout


# --- running -----------------------------------------------------------------------------------------------------

def test_teacher_from_an_artifact_path_relative_to_the_recipe(tmp_path):
    torch.manual_seed(0)
    domain = load_domain(DIGITS)
    splits = load_splits(domain.data, base_dir=domain.base_dir, input_shape=(1, 8, 8))
    teacher = LeNet300100(width=0.5)
    fit(teacher, splits.train, splits.val, TrainConfig(epochs=4, lr=0.003, batch_size=32), seed=0)
    save_artifact(teacher, tmp_path / "teachers" / "t", architecture={"name": "lenet300_100",
                                                                      "kwargs": {"width": 0.5}})
    # No student: distill into the domain's (untrained) model; the teacher is the artifact, found from the recipe.
    recipe = _write_recipe(tmp_path / "recipes" / "r.yaml",
                           "  - distill: {teacher: ../teachers/t, temperature: 3.0, alpha: 0.8, epochs: 4,"
                           " lr: 0.003, batch_size: 32}\n")
    metrics = run_recipe(load_recipe(recipe), tmp_path / "out", log=lambda _: None)
    (record,) = metrics["stages"]
    assert record["teacher"] == "../teachers/t" and record["student"] == "current model"
    assert record["teacher_params"] == _lenet_params(150, 50) == sum(p.numel() for p in teacher.parameters())
    assert record["student_params"] == _lenet_params(300, 100) == metrics["params"]
    from torchslim.evaluate import compute_metric

    assert record["teacher_val_metric"] == pytest.approx(compute_metric(teacher, splits.val))
    assert record["teacher_val_metric"] > 0.85 and record["val_metric"] > 0.85  # the student learned from it
    # The baseline is the run's own model before the stage (untrained), the reported value the student's.
    assert metrics["baseline_value"] < 0.3 < 0.85 < metrics["value"]


class _Interrupted(Exception):
    pass


def test_resume_after_an_interrupted_distillation_gives_the_same_weights(tmp_path, monkeypatch):
    # A learned feature projection (75 -> 300 wide) trains beside the student: it must survive the interruption.
    recipe = _write_recipe(tmp_path / "r.yaml",
                           "  - train: {epochs: 2, lr: 0.003, batch_size: 32}\n"
                           "  - distill: {student: {name: lenet300_100, kwargs: {width: 0.25}}, alpha: 0.7,"
                           " features: [{student: fc1, teacher: fc1, weight: 0.05}], epochs: 4, lr: 0.005,"
                           " batch_size: 32}\n", seed=5)
    quiet = lambda _: None  # noqa: E731
    full = run_recipe(load_recipe(recipe), tmp_path / "full", log=quiet)

    save = torchslim.train._save_checkpoint
    saved_epochs: list[int] = []

    def save_then_stop(path, next_epoch, *args):
        save(path, next_epoch, *args)
        if path.name.startswith("stage1-distill"):
            saved_epochs.append(next_epoch)
            if next_epoch == 2 and len(saved_epochs) == 2:
                raise _Interrupted

    monkeypatch.setattr(torchslim.train, "_save_checkpoint", save_then_stop)
    with pytest.raises(_Interrupted):
        run_recipe(load_recipe(recipe), tmp_path / "cut", log=quiet)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    lines: list[str] = []
    resumed = run_recipe(load_recipe(recipe), tmp_path / "cut", resume=True, log=lines.append)

    assert "resume: 1 stage(s) already done" in lines
    assert saved_epochs == [1, 2, 3, 4]  # the resumed run went on from epoch 2, it did not start over
    a = load_state(tmp_path / "full" / "artifact")
    b = load_state(tmp_path / "cut" / "artifact")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["value"] == full["value"] and resumed["stages"][1]["val_metric"] == full["stages"][1]["val_metric"]

    # The student is the run's model: manifest, params and value describe it; the baseline is the teacher.
    model, manifest = load_artifact(tmp_path / "cut" / "artifact")
    assert manifest["architecture"] == {"name": "lenet300_100", "kwargs": {"width": 0.25, "num_classes": 10}}
    assert full["params"] == _lenet_params(75, 25) and full["baseline_params"] == _lenet_params(300, 100)
    assert "rank_digests" not in full["stages"][1]  # one process: no replicas to compare
    saved = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert saved["stages"][1]["temperature"] == 4.0 and saved["stages"][1]["alpha"] == 0.7
