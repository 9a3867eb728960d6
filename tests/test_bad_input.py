"""Each class of bad input the fuzzer generates, once by hand: exit code 2, one line naming the file and field.

The CLI runs in-process (click's runner), as the fuzzer runs it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from torchslim._errors import MAX_LINE, ConfigError
from torchslim.cli import cli
from torchslim.data import load_splits
from torchslim.domain import DataSpec

DOMAIN = """name: tiny
task: image-classification
data: {source: digits, test_fraction: 0.2, val_fraction: 0.1, seed: 0}
model: {name: lenet300_100, kwargs: {hidden1: 8, hidden2: 8}}
"""
RECIPE = "domain: domain.yaml\nseed: 0\nstages:\n  - train: {epochs: 1, lr: 0.01}\n"


def run_cli(folder: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Exit code and the non-empty stderr lines of ``torchslim ARGS`` run in ``folder``."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(cli, list(args), env={"TQDM_DISABLE": "1", **(env or {})})
    finally:
        os.chdir(cwd)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, [line for line in result.stderr.splitlines() if line.strip()]


def rejected(folder: Path, *, recipe: str | bytes = RECIPE, domain: str | bytes | None = DOMAIN,
             args: tuple[str, ...] = ()) -> str:
    """Write the files, ``check`` them, and return the single error line (asserting exit code 2)."""
    for name, text in (("recipe.yaml", recipe), ("domain.yaml", domain)):
        if text is not None:
            (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    code, lines = run_cli(folder, "check", "recipe.yaml", *args)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and len(lines[0]) <= MAX_LINE
    return lines[0].removeprefix("error: ")


def with_model(**model: object) -> str:
    kwargs = ", ".join(f"{k}: {v}" for k, v in model.items())
    return DOMAIN.replace("model: {name: lenet300_100, kwargs: {hidden1: 8, hidden2: 8}}", f"model: {{{kwargs}}}")


def with_stage(stage: str) -> str:
    return RECIPE + f"  - {stage}\n"


# --- bytes and YAML ---------------------------------------------------------------------------------------------


def test_bytes_that_are_not_utf8(tmp_path):
    assert rejected(tmp_path, recipe=b"domain: do\xffmain.yaml\n").startswith(
        "recipe.yaml: not UTF-8 text: byte 0xff at line 1, column 11")
    assert rejected(tmp_path, domain=DOMAIN.encode() + b"\xc3\x28").startswith("domain.yaml: not UTF-8 text")


def test_yaml_errors_are_one_line_with_line_and_column(tmp_path):
    line = rejected(tmp_path, recipe=RECIPE + "  - [unclosed\n")
    assert line == "recipe.yaml: invalid YAML at line 6, column 1: expected ',' or ']', but got '<stream end>'"
    assert rejected(tmp_path, recipe="domain: do\x00main.yaml\n") == (
        "recipe.yaml: character '\\x00' at line 1, column 11 is not allowed in YAML")
    assert rejected(tmp_path, recipe="a: !!timestamp 2024-13-45\n").startswith(
        "recipe.yaml: invalid YAML at line 1, column 4: cannot read '2024-13-45'")
    assert rejected(tmp_path, recipe=RECIPE.replace("seed: 0", "seed: 2024-01-31")) == (
        "recipe.yaml: seed: must be a non-negative integer")  # a date stays a string


def test_a_key_twice_in_one_mapping(tmp_path):
    assert rejected(tmp_path, recipe=RECIPE + "seed: 1\n") == (
        "recipe.yaml: invalid YAML at line 5, column 1: key 'seed' appears twice in one mapping (first at line 2)")
    assert rejected(tmp_path, domain=DOMAIN + "name: other\n").startswith(
        "domain.yaml: invalid YAML at line 5, column 1: key 'name' appears twice")
    # a merge key may repeat what it merges: that is how YAML overrides a shared block
    assert rejected(tmp_path, recipe="base: &b {epochs: 1, lr: 0.01}\n" + RECIPE.replace(
        "{epochs: 1, lr: 0.01}", "{<<: *b, epochs: 0}")) == (
        "recipe.yaml: base: unknown key (expected domain, seed, stages)")


def test_deep_nesting_and_alias_bombs(tmp_path):
    assert rejected(tmp_path, recipe="seed: " + "[" * 100 + "]" * 100 + "\n") == (
        "recipe.yaml: the YAML nests deeper than 64 levels")
    assert rejected(tmp_path, recipe="seed: " + "[" * 5000 + "]" * 5000 + "\n").startswith("recipe.yaml: invalid YAML")
    laughs = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg"))
    assert rejected(tmp_path, recipe=laughs).startswith("recipe.yaml: the YAML holds more than 100,000 values")
    assert rejected(tmp_path, recipe="a: &x [*x]\n") == (
        "recipe.yaml: the YAML an alias refers to a mapping or list that contains it")


def test_a_domain_given_for_a_recipe_and_a_recipe_for_a_domain(tmp_path):
    (tmp_path / "domain.yaml").write_text(DOMAIN)
    code, lines = run_cli(tmp_path, "run", "domain.yaml", "--out", "out")
    assert code == 2 and lines == ["error: domain.yaml: a domain (task, data, model), not a recipe: a recipe names "
                                   "its domain under 'domain:' and lists 'stages:' (`torchslim auto` searches a "
                                   "domain)"]
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    code, lines = run_cli(tmp_path, "auto", "recipe.yaml", "--out", "out")
    assert code == 2 and lines == ["error: recipe.yaml: a recipe (domain, stages), not a domain: `torchslim run` "
                                   "runs a recipe; `torchslim auto` takes the domain file it names"]
    assert not (tmp_path / "out").exists()


def test_huge_integers(tmp_path):
    assert rejected(tmp_path, recipe=RECIPE.replace("seed: 0", "seed: " + "9" * 5000)) == (
        "recipe.yaml: invalid YAML at line 2, column 7: an integer of 5,000 digits is too large (at most 1,000)")
    assert rejected(tmp_path, recipe=RECIPE.replace("seed: 0", "seed: " + "9" * 50)) == (
        "recipe.yaml: seed: must be at most 4294967295 (2**32 - 1)")
    assert rejected(tmp_path, domain=DOMAIN.replace("seed: 0", "seed: -1")) == "domain.yaml: data.seed: must be >= 0"
    assert rejected(tmp_path, domain=DOMAIN.replace("seed: 0", f"seed: {2**40}")) == (
        "domain.yaml: data.seed: must be <= 4294967295")
    assert rejected(tmp_path, args=("--set", "stages.0.train.epochs=" + "9" * 2000)).startswith(
        "recipe.yaml: --set stages.0.train.epochs: invalid YAML at line 1, column 1: an integer of 2,000 digits")


def test_infinities_and_nan(tmp_path):
    assert rejected(tmp_path, recipe=RECIPE.replace("lr: 0.01", "lr: .inf")) == (
        "recipe.yaml: stages[0].train.lr: must be a finite number")
    assert rejected(tmp_path, domain=DOMAIN + "constraints: {max_latency_ms: {batch_1: .nan}}\n") == (
        "domain.yaml: constraints.max_latency_ms.batch_1: must be a finite number")
    assert rejected(tmp_path, domain=with_model(name="lenet300_100", kwargs="{width: .inf}")) == (
        "domain.yaml: model.kwargs.width: must be a positive number, got inf")
    assert rejected(tmp_path, domain=with_model(name="lenet5", kwargs="{width: .nan}")) == (
        "domain.yaml: model.kwargs.width: must be a positive number, got nan")
    assert rejected(tmp_path, recipe=with_stage("quantize: {method: kmeans, finetune: {epochs: 1, lr: .inf}}")) \
        .startswith("recipe.yaml: stages[1].quantize.finetune.lr: must be a positive number")


def test_true_and_false_are_no_numbers_and_sizes_are_positive(tmp_path):
    assert rejected(tmp_path, recipe=RECIPE.replace("epochs: 1", "epochs: true")) == (
        "recipe.yaml: stages[0].train.epochs: must be an integer, not true")
    assert rejected(tmp_path, domain=DOMAIN + "constraints: {max_size_bytes: false}\n") == (
        "domain.yaml: constraints.max_size_bytes: must be an integer, not false")
    assert rejected(tmp_path, domain=with_model(name="lenet5", kwargs="{width: true}")) == (
        "domain.yaml: model.kwargs.width: must be a positive number, got true")
    assert rejected(tmp_path, recipe=with_stage("distill: {student: {name: lenet5, kwargs: {width: 0}}}")) == (
        "recipe.yaml: stages[1].distill.student.kwargs.width: must be a positive number, got 0")
    assert rejected(tmp_path, recipe=RECIPE.replace("lr: 0.01", "lr: 1.0e+308")) == (
        "recipe.yaml: stages[0].train.lr: must be <= 10.0")


def test_weights_holding_nan_are_refused(tmp_path):
    from safetensors.torch import save_file

    from torchslim.domain import ModelSpec
    from torchslim.models import build_model

    state = build_model(ModelSpec(name="lenet300_100", kwargs={"hidden1": 8, "hidden2": 8})).state_dict()
    state["fc2.bias"][3] = float("nan")
    save_file(state, str(tmp_path / "w.safetensors"))
    assert rejected(tmp_path, domain=DOMAIN.replace("hidden2: 8}}", "hidden2: 8}, weights: w.safetensors}")) == (
        "domain.yaml: model.weights: w.safetensors: tensor 'fc2.bias' holds NaN or infinite values")

def test_absurd_model_sizes_are_refused_before_allocating(tmp_path):
    line = rejected(tmp_path, domain=with_model(name="lenet300_100", kwargs="{width: 1000000}"))
    assert line.startswith("domain.yaml: model.kwargs: would build a model of 30,000,020,600,000,010 parameters")
    line = rejected(tmp_path, domain=with_model(name="lenet300_100", kwargs="{num_classes: -3}"))
    assert line == "domain.yaml: model.kwargs.num_classes: must be a positive integer, got -3"
    line = rejected(tmp_path, recipe=with_stage("distill: {student: {name: lenet5, kwargs: {fc: 100000000000}}}"))
    assert line.startswith("recipe.yaml: stages[1].distill.student.kwargs: would build a model of")


@pytest.mark.parametrize("factory", [".foo:bar", "..x:y", "a..b:c", ":build", "mod:", "mod.:f", "mod:f:g", "1m:f"])
def test_factory_must_be_an_absolute_module_and_a_function(tmp_path, factory):
    line = rejected(tmp_path, domain=with_model(factory=f"'{factory}'"))
    assert line.startswith("domain.yaml: model.factory: must look like 'package.module:function'")


def test_a_factory_module_that_fails_to_import_or_build(tmp_path):
    (tmp_path / "broken_syntax_mod.py").write_text("def build(:\n")
    assert rejected(tmp_path, domain=with_model(factory="broken_syntax_mod:build")).startswith(
        "domain.yaml: model.factory: importing 'broken_syntax_mod:build' failed: SyntaxError")
    (tmp_path / "raising_build_mod.py").write_text("def build():\n    return 1 / 0\n")
    assert rejected(tmp_path, domain=with_model(factory="raising_build_mod:build")) == (
        "domain.yaml: model.kwargs: building the model failed: ZeroDivisionError: division by zero")
    assert str(tmp_path.resolve()) not in sys.path  # the import put it there only while it ran


def test_a_model_that_returns_a_tuple(tmp_path):
    (tmp_path / "tuple_mod.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(64, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1)), x\n"
        "def build():\n"
        "    return Net()\n")
    assert rejected(tmp_path, domain=with_model(factory="tuple_mod:build")) == (
        "domain.yaml: model: must return one tensor of logits (N, classes); it returned a tuple; let the factory "
        "return a wrapper whose forward returns the logits alone, e.g. model(x)['logits'] or model(x)[0]")


def test_a_model_onnx_cannot_express_is_refused_wherever_onnx_is_needed(tmp_path):
    # torch's exporter writes an LSTM with proj_size as a graph ONNX Runtime cannot run: each use of ONNX is refused
    # at check, naming the field and the layer, before anything trains; weight-only in torch still works
    (tmp_path / "proj_mod.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.rnn = nn.LSTM(8, 16, proj_size=4, batch_first=True)\n"
        "        self.fc = nn.Linear(4, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.rnn(x.flatten(1, 2))[0][:, -1])\n"
        "def build():\n"
        "    return Net()\n")
    domain = with_model(factory="proj_mod:build")
    why = "rnn is an LSTM with proj_size, which ONNX's LSTM cannot express"
    assert rejected(tmp_path, domain=domain + "runtime: onnxruntime\n") == (
        f"domain.yaml: runtime: onnxruntime runs the model's ONNX export, and {why}; use runtime: torch")
    assert rejected(tmp_path, domain=domain, recipe=with_stage("quantize: {method: dynamic}")) == (
        f"recipe.yaml: stages[1].quantize.method: dynamic runs on the model's ONNX export, and {why}; use weight "
        f"or kmeans")
    assert rejected(tmp_path, domain=domain, recipe=with_stage("export: {formats: [torchslim, onnx]}")) == (
        f"recipe.yaml: stages[1].export.formats: onnx is the model's ONNX export, and {why}; leave onnx out")
    (tmp_path / "recipe.yaml").write_text(with_stage("quantize: {method: weight, bits: 4}"))
    assert run_cli(tmp_path, "check", "recipe.yaml")[0] == 0


def test_outputs_that_fit_but_will_not_train_as_meant_are_warned_of(tmp_path):
    # a trailing Softmax, and 12 outputs for 10 classes: checked, each said once, and the check still passes
    (tmp_path / "odd_mod.py").write_text(
        "import torch.nn as nn\n"
        "def build(outputs=10, softmax=False):\n"
        "    layers = [nn.Flatten(), nn.Linear(64, outputs)]\n"
        "    return nn.Sequential(*layers, *([nn.Softmax(dim=1)] if softmax else []))\n")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    for kwargs, expected in (("{softmax: true}", ["look like probabilities"]),
                             ("{outputs: 12}", ["outputs 12 scores per sample but the data has 10 classes"]),
                             ("{}", [])):
        (tmp_path / "domain.yaml").write_text(with_model(factory="odd_mod:build", kwargs=kwargs))
        code, lines = run_cli(tmp_path, "check", "recipe.yaml")
        assert code == 0 and len(lines) == len(expected), lines
        for line, words in zip(lines, expected):
            assert line.startswith("warning: domain.yaml: the model") and words in line


def test_labels_no_sample_has_are_warned_of(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "gaps.npz", x=rng.random((60, 1, 8, 8), dtype=np.float32), y=np.repeat([0, 2, 5], 20))
    (tmp_path / "domain.yaml").write_text(DOMAIN.replace("source: digits", "source: 'npz:gaps.npz'"))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    code, lines = run_cli(tmp_path, "check", "recipe.yaml")
    assert code == 0 and len(lines) == 1, lines
    assert lines[0] == ("warning: domain.yaml: data.source: no sample has any of the labels [1, 3, 4] (3); classes "
                        "are numbered 0 to 5, so the model gets 6 outputs and no sample trains 3 of them")


def test_features_on_very_different_scales_are_warned_of(tmp_path):
    # tabular columns as stored: one spread 1,000x the others dominates training (see runner.SCALE_RATIO)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    domain = DOMAIN.replace("task: image-classification", "task: tabular-classification").replace(
        "name: lenet300_100, kwargs: {hidden1: 8, hidden2: 8}", "name: mlp, kwargs: {hidden: [8]}")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    cases = {"wide": (x * [1, 1, 1, 1000], 1), "near": (x * [1, 1, 1, 50], 0),
             "ids": (rng.integers(0, 5000, size=(200, 4)) * [1, 1, 1, 1000], 0)}  # token ids, categories: exempt
    said = {}
    for name, (features, warned) in cases.items():
        np.savez(tmp_path / f"{name}.npz", x=features, y=np.arange(200) % 2)
        (tmp_path / "domain.yaml").write_text(domain.replace("source: digits", f"source: 'npz:{name}.npz'"))
        code, said[name] = run_cli(tmp_path, "check", "recipe.yaml")
        assert code == 0 and len(said[name]) == warned, (name, said[name])
    (line,) = said["wide"]
    head = ("warning: domain.yaml: data.source: input features differ in scale: feature 3's standard deviation on "
            "the training split is ")
    assert line.startswith(head), line
    spread, median = (float(part.split(",")[0].split(";")[0]) for part in
                      (line[len(head):], line.split("the median feature's ")[1]))
    assert 800 < spread < 1200 and 0.8 < median < 1.2  # the column's and the others' spreads (1000 and 1)
    assert line.endswith("standardise the features first (or in the model's forward) for training to work on all "
                         "of them")


def test_top5_on_five_classes_or_fewer_is_refused(tmp_path):
    # every sample would count as right: a metric, a drop and constraints that say nothing
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "five.npz", x=rng.random((60, 1, 8, 8), dtype=np.float32), y=np.arange(60) % 5)
    np.savez(tmp_path / "six.npz", x=rng.random((60, 1, 8, 8), dtype=np.float32), y=np.arange(60) % 6)
    domain = DOMAIN + "metric: top5\n"
    assert rejected(tmp_path, domain=domain.replace("source: digits", "source: 'npz:five.npz'")) == (
        "domain.yaml: metric: top5 needs more than 5 classes, the data has 5: every sample would count as right; "
        "use accuracy")
    (tmp_path / "domain.yaml").write_text(domain.replace("source: digits", "source: 'npz:six.npz'"))
    assert run_cli(tmp_path, "check", "recipe.yaml")[0] == 0


def test_a_factory_given_a_class_count_or_input_shape_no_data_has(tmp_path):
    # torch builds a zero-width Linear with only a warning; the error is one line, with no warning before it
    (tmp_path / "classes_mod.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes, input_shape=(1, 8, 8)):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n")
    assert rejected(tmp_path, domain=with_model(factory="classes_mod:build", kwargs="{num_classes: 0}")) == (
        "domain.yaml: model.kwargs.num_classes: must be a positive integer, got 0")
    assert rejected(tmp_path, domain=with_model(factory="classes_mod:build",
                                                kwargs="{num_classes: 10, input_shape: [1, 0, 8]}")) == (
        "domain.yaml: model.kwargs.input_shape: must be a list of positive integers, got [1, 0, 8]")


# --- paths ------------------------------------------------------------------------------------------------------


def test_special_files_as_recipe_or_domain(tmp_path):
    (tmp_path / "folder").mkdir()
    code, lines = run_cli(tmp_path, "check", "folder")
    assert code == 2 and lines == ["error: folder: RECIPE: is a directory"]
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    code, lines = run_cli(tmp_path, "check", "zero.yaml")
    assert code == 2 and lines == ["error: zero.yaml: is a device, not a file"]
    os.mkfifo(tmp_path / "pipe.yaml")
    assert rejected(tmp_path, recipe=RECIPE.replace("domain.yaml", "pipe.yaml")) == (
        "recipe.yaml: domain: is a named pipe, not a file: pipe.yaml")
    long_name = "n" * 300 + ".yaml"
    assert rejected(tmp_path, recipe=RECIPE.replace("domain.yaml", long_name)).startswith(
        "recipe.yaml: domain: cannot read the file: the path or a name in it is too long: nnnn")
    code, lines = run_cli(tmp_path, "eval", "x", "--domain", "folder")
    assert code == 2 and lines == ["error: folder: --domain: is a directory"]


def test_unreadable_file(tmp_path, monkeypatch):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    real_open = open

    def deny(path, *args, **kwargs):  # chmod 000 does not stop root, who runs some CI machines
        if str(path).endswith("recipe.yaml"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    code, lines = run_cli(tmp_path, "check", "recipe.yaml")
    assert code == 2 and lines == ["error: recipe.yaml: cannot read the file: Permission denied"]


def test_special_paths_as_data_weights_and_teacher(tmp_path):
    (tmp_path / "data.npz").mkdir()
    line = rejected(tmp_path, domain=DOMAIN.replace("source: digits", "source: 'npz:data.npz'"))
    assert line.startswith("domain.yaml: data.source: ") and line.endswith("data.npz: is a directory, not a file")
    (tmp_path / "w.safetensors").symlink_to("/dev/zero")
    line = rejected(tmp_path, domain=with_model(name="lenet300_100", weights="w.safetensors"))
    assert line.startswith("domain.yaml: model.weights: ") and line.endswith("is a device, not a file")
    line = rejected(tmp_path, recipe=with_stage("distill: {teacher: " + "t" * 300 + "}"))
    assert line.startswith("recipe.yaml: stages[1].distill.teacher: cannot read")
    line = rejected(tmp_path, domain=DOMAIN.replace("source: digits", "source: 'imagefolder:" + "i" * 300 + "'"))
    assert line.startswith("domain.yaml: data.source: cannot read image folder")


def test_run_writes_nothing_on_bad_input(tmp_path):
    (tmp_path / "domain.yaml").write_text(with_model(factory="'.rel:build'"))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    code, lines = run_cli(tmp_path, "run", "recipe.yaml", "--out", "out")
    assert code == 2 and lines[0].startswith("error: domain.yaml: model.factory: ")
    assert not (tmp_path / "out").exists()


# --- data -------------------------------------------------------------------------------------------------------


def npz_domain(tmp_path: Path, test_fraction: float = 0.2, **arrays: np.ndarray) -> str:
    np.savez(tmp_path / "data.npz", **arrays)
    return DOMAIN.replace("source: digits", "source: 'npz:data.npz'").replace("test_fraction: 0.2",
                                                                             f"test_fraction: {test_fraction}")


def test_npz_arrays_of_strings_objects_or_wrong_shapes(tmp_path):
    x, y = np.random.default_rng(0).random((40, 1, 8, 8)), np.arange(40) % 4
    line = rejected(tmp_path, domain=npz_domain(tmp_path, x=np.array([["a"] * 64] * 40), y=y))
    assert line == "domain.yaml: data.source: data.npz: array x holds <U1 values; expected real numbers"
    line = rejected(tmp_path, domain=npz_domain(tmp_path, x=np.array([None] * 40, dtype=object), y=y))
    assert line.startswith("domain.yaml: data.source: cannot read ") and "allow_pickle=False" in line
    line = rejected(tmp_path, domain=npz_domain(tmp_path, x=x, y=y, x_test=x[:5, :, :4], y_test=y[:5]))
    assert line == "domain.yaml: data.source: data.npz: x_test has samples of shape (1, 4, 8) but x has (1, 8, 8)"
    line = rejected(tmp_path, domain=npz_domain(tmp_path, x=x, y=y[:, None].repeat(2, 1)))  # (a column is read)
    assert line.startswith("domain.yaml: data.source: data.npz: array y has shape (40, 2)")
    line = rejected(tmp_path, domain=npz_domain(tmp_path, x=x, y=np.array(["cat", "dog"])[y % 2].reshape(20, 2)))
    assert line.startswith("domain.yaml: data.source: data.npz: array y has shape (20, 2)")
    line = rejected(tmp_path, domain=npz_domain(tmp_path, x=x, y=y + 10**9))
    assert line == "domain.yaml: data.source: data.npz: array y: labels must be whole numbers in [0, 100000)"
    line = rejected(tmp_path, domain=npz_domain(tmp_path, x=x[:0], y=y[:0]))
    assert line.startswith("domain.yaml: data.source: data.npz: array x has shape (0, 1, 8, 8)")


def test_channels_last_images_are_named_as_such(tmp_path):
    """(N, H, W, C) images, numpy's and PIL's order, meet a model that takes (N, C, H, W): the error says so."""
    rng, y = np.random.default_rng(0), np.arange(40) % 4
    line = rejected(tmp_path, domain=npz_domain(tmp_path, x=rng.random((40, 8, 8, 1), dtype=np.float32), y=y))
    assert line == ("domain.yaml: model: expects inputs of shape (N, 1, 8, 8) but the data has shape (N, 8, 8, 1) "
                    "(the samples look channels-last, (H, W, C) = (8, 8, 1): store x as (N, C, H, W), e.g. "
                    "np.transpose(x, (0, 3, 1, 2)))")
    (tmp_path / "rgb.py").write_text("from torch import nn\n\ndef build(num_classes=4):\n    return nn.Sequential("
                                     "nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, num_classes))\n")
    x = rng.random((40, 8, 8, 3), dtype=np.float32)
    domain = npz_domain(tmp_path, x=x, y=y).replace("model: {name: lenet300_100, kwargs: {hidden1: 8, hidden2: 8}}",
                                                    "model: {factory: 'rgb:build'}")
    line = rejected(tmp_path, domain=domain)
    assert line.startswith("domain.yaml: model: forward pass on data of shape (2, 8, 8, 3) failed (the samples look "
                           "channels-last, (H, W, C) = (8, 8, 3): store x as (N, C, H, W), e.g. np.transpose(x, "
                           "(0, 3, 1, 2))): ")
    assert run_cli(tmp_path, "check", "recipe.yaml")[0] == 2
    (tmp_path / "domain.yaml").write_text(npz_domain(tmp_path, x=x.transpose(0, 3, 1, 2), y=y).replace(
        "model: {name: lenet300_100, kwargs: {hidden1: 8, hidden2: 8}}", "model: {factory: 'rgb:build'}"))
    assert run_cli(tmp_path, "check", "recipe.yaml")[0] == 0  # as the hint says


def test_a_corrupt_image_in_an_image_folder(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    (tmp_path / "imgs" / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    line = rejected(tmp_path, domain=with_model(name="lenet5").replace("source: digits", "source: 'imagefolder:imgs'"))
    assert line.startswith("domain.yaml: data.source: cannot read image imgs/a/bad.png: ")


def test_splits_too_small_for_the_classes(tmp_path):
    line = rejected(tmp_path, domain=DOMAIN.replace("test_fraction: 0.2", "test_fraction: 0.002"))
    assert line.startswith("domain.yaml: data.test_fraction: the test split of 0.002 of 1797 samples holds 4")
    line = rejected(tmp_path, domain=DOMAIN.replace("val_fraction: 0.1", "val_fraction: 0.001"))
    assert line.startswith("domain.yaml: data.val_fraction: the validation split of 0.00125 of 1437 samples")
    x, y = np.zeros((12, 1, 8, 8)), np.arange(12) % 6
    line = rejected(tmp_path, domain=npz_domain(tmp_path, x=x, y=y))
    assert line.startswith("domain.yaml: data.test_fraction: ") and "at least 6 (one per class)" in line


def test_the_data_summary_says_whether_the_split_was_stratified(tmp_path):
    from torchslim.report._sections import _data

    x = np.random.default_rng(0).random((41, 4)).astype(np.float32)
    np.savez(tmp_path / "even.npz", x=x[:40], y=np.arange(40) % 2)
    np.savez(tmp_path / "single.npz", x=x, y=np.r_[np.arange(40) % 2, 2])  # class 2 has one sample
    even = load_splits(DataSpec(source="npz:even.npz"), base_dir=tmp_path)
    single = load_splits(DataSpec(source="npz:single.npz"), base_dir=tmp_path)
    assert even.info["stratified"] is True and single.info["stratified"] is False

    def text(info):
        return _data({"data": info})[1].text

    assert "(seed 0, stratified)" in text(even.info)
    assert "not stratified: a class has a single sample" in text(single.info)


# --- stage configs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage, field", [
    ("quantize: {method: [static]}", "stages[1].quantize.method"),
    ("quantize: {method: static, calibration: {observer: [minmax]}}", "stages[1].quantize.calibration.observer"),
    ("quantize: {method: weight, overrides: {3: 4}}", "stages[1].quantize.overrides.3"),
    ("quantize: {method: weight, ignore: ['re:a{99999999999}']}", "stages[1].quantize.ignore"),
    ("prune: {method: {a: 1}, sparsity: 0.5}", "stages[1].prune.method"),
    ("prune: {method: magnitude, sparsity: 0.5, ignore: ['re:a{99999999999}']}", "stages[1].prune.ignore[0]"),
    ("prune: {method: magnitude, sparsity: 0.5, 7: 1}", "stages[1].prune.7"),
    ("distill: {alpha: .nan}", "stages[1].distill.alpha"),
    ("export: {formats: [onnx, onnx]}", "stages[1].export.formats"),
])
def test_stage_configs_name_the_field(tmp_path, stage, field):
    line = rejected(tmp_path, recipe=with_stage(stage))
    assert line.startswith(f"recipe.yaml: {field}: "), line


def test_unknown_top_level_keys_of_any_type(tmp_path):
    assert rejected(tmp_path, recipe=RECIPE + "1: x\nzz: y\n") == (
        "recipe.yaml: 1: unknown key (expected domain, seed, stages)")


# --- the line itself --------------------------------------------------------------------------------------------


def test_the_line_is_bounded_and_keeps_the_file_name():
    err = ConfigError("stages[0]." + "k" * 500, "bad value " + "x" * 1000 + "\nsecond line",
                      "/very/" + "long/" * 100 + "recipe.yaml")
    line = f"error: {err}"
    assert len(line) <= MAX_LINE and "\n" not in line
    assert line.startswith("error: …") and "/long/recipe.yaml: stages[0].kkk" in line


def test_an_unexpected_exception_is_one_line_asking_for_a_report(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("internal\ndetail")

    monkeypatch.setattr("torchslim.recipe.load_recipe", boom)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    code, lines = run_cli(tmp_path, "check", "recipe.yaml")
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("error: unexpected RuntimeError: internal detail (a bug in torchslim: please report")
    with pytest.raises(RuntimeError, match="internal"):
        run_cli(tmp_path, "check", "recipe.yaml", env={"TORCHSLIM_TRACEBACK": "1"})


def test_an_empty_domain_path_names_the_recipe(tmp_path):
    assert rejected(tmp_path, recipe=RECIPE.replace("domain.yaml", "''")) == (
        "recipe.yaml: domain: must be a path to a domain file or an inline mapping")


def test_training_that_diverges_is_one_line_and_leaves_no_folder(tmp_path):
    """Weights of 1e30 (finite, so the weights file is accepted) overflow the first forward pass to inf."""
    import torch
    from safetensors.torch import save_file

    from torchslim.domain import ModelSpec
    from torchslim.models import build_model

    model = build_model(ModelSpec(name="lenet300_100", kwargs={"hidden1": 8, "hidden2": 8}))
    save_file({k: torch.full_like(v, 1e30) for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "domain.yaml").write_text(DOMAIN.replace("hidden2: 8}}", "hidden2: 8}, weights: w.safetensors}"))
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace(
        "train: {epochs: 1, lr: 0.01}", "prune: {method: magnitude, sparsity: 0.5, finetune: {epochs: 1, lr: 0.01}}"))
    code, lines = run_cli(tmp_path, "run", "recipe.yaml", "--out", "out", "--threads", "1")
    assert code == 2 and len(lines) == 2, lines  # the stage's progress line, then the error
    assert lines[-1].startswith("error: recipe.yaml: stages[0].prune.finetune.lr: training diverged")
    assert not (tmp_path / "out").exists()


def test_a_misspelt_key_gets_a_suggestion_and_a_missing_domain_names_the_recipe(tmp_path):
    assert rejected(tmp_path, domain=DOMAIN + "metrc: accuracy\n") == \
        "domain.yaml: metrc: unknown key; did you mean 'metric'?"
    assert rejected(tmp_path, recipe=RECIPE.replace("lr: 0.01", "lr: 0.01, bach_size: 8")) == \
        "recipe.yaml: stages[0].train.bach_size: unknown key; did you mean 'batch_size'?"
    assert rejected(tmp_path, recipe=RECIPE.replace("lr: 0.01", "lr: 0.01, zzz: 8")) == (
        "recipe.yaml: stages[0].train.zzz: unknown key (expected epochs, lr, batch_size, weight_decay, optimizer, "
        "schedule, augment)")
    assert rejected(tmp_path, recipe=with_stage("prune: {method: structured, sparsity: 0.5, zzz: 1}")) == (
        "recipe.yaml: stages[1].prune.zzz: unknown key (expected method, sparsity, importance, calibration, "
        "schedule, finetune, ignore, overrides, reconstruct, sensitivity)")  # the stage's own key too
    assert rejected(tmp_path, recipe=RECIPE.replace("domain.yaml", "elsewhere.yaml")) == \
        "recipe.yaml: domain: file not found: elsewhere.yaml"


def test_misspelt_names_get_a_suggestion(tmp_path):
    from torchslim._errors import ConfigError
    from torchslim.domain import load_domain
    from torchslim.models import build_model
    from torchslim.quantize.config import config_from_mapping
    from torchslim.recipe import load_recipe

    (tmp_path / "r.yaml").write_text("domain: {name: d, task: image-classification, data: {source: digits}, "
                                     "model: {name: lenet300_100}}\nstages:\n  - quantise: {method: static}\n")
    with pytest.raises(ConfigError, match=r"stages\[0\].quantise: unknown stage; did you mean 'quantize'\? known:"):
        load_recipe(tmp_path / "r.yaml")
    domain = load_domain({"name": "d", "task": "image-classification", "data": {"source": "digits"},
                          "model": {"name": "lenet300-100"}})
    with pytest.raises(ConfigError, match="did you mean 'lenet300_100'"):
        build_model(domain.model)
    with pytest.raises(ConfigError, match="did you mean 'dynamic'"):
        config_from_mapping({"method": "dynamik"})
    with pytest.raises(ConfigError, match=r"unknown stage; known:"):  # nothing close: only the list
        (tmp_path / "r.yaml").write_text((tmp_path / "r.yaml").read_text().replace("quantise", "zzz"))
        load_recipe(tmp_path / "r.yaml")


def test_flags_out_of_range_or_in_conflict_are_one_line_and_write_nothing(tmp_path):
    (tmp_path / "domain.yaml").write_text(DOMAIN)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    (tmp_path / "file").write_text("")
    cases = [
        (("run", "recipe.yaml", "--out", "out", "--bogus"), "No such option '--bogus'"),
        (("bogus",), "No such command 'bogus'"),
        (("run", "recipe.yaml", "--out", "out", "--threads", "100000000000"), "--threads: 100000000000 is not in "),
        (("run", "recipe.yaml", "--out", "out", "--resume", "--overwrite"), "--overwrite: cannot be given with"),
        (("run", "recipe.yaml", "--out", "file/sub"), "--out: file/sub: file is not a folder"),
        (("auto", "domain.yaml", "--out", "out", "--drop-margin", "nan"), "--drop-margin: must be a number in"),
        (("auto", "domain.yaml", "--out", "out", "--study", " "), "--study: must be a non-empty name"),
        (("auto", "domain.yaml", "--out", "out", "--seed", "4294967296"), "--seed: 4294967296 is not in the range"),
    ]
    for args, message in cases:
        code, lines = run_cli(tmp_path, *args)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, lines)
        assert not (tmp_path / "out").exists()
