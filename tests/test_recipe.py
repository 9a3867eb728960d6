from pathlib import Path

import pytest

from torchslim._errors import ConfigError
from torchslim.domain import load_domain
from torchslim.recipe import load_recipe
from torchslim.runner import prepare

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DOMAINS = sorted((ROOT / "domains").rglob("*.yaml"))
SHIPPED_RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def test_shipped_files_are_found():
    assert len(SHIPPED_DOMAINS) >= 2 and len(SHIPPED_RECIPES) >= 3


@pytest.mark.parametrize("path", SHIPPED_DOMAINS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_domain_loads(path):
    assert load_domain(path).name


@pytest.mark.parametrize("path", SHIPPED_RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_loads_and_checks(path):
    recipe = load_recipe(path)
    assert recipe.stages
    assert path.read_text().startswith("#"), "a shipped recipe starts with the command that runs it"
    if recipe.domain.task == "sentence-embedding":
        from torchslim.text.run import prepare_text

        assert len(prepare_text(recipe, log=lambda _m: None).splits.train) > 0
        return
    ctx = prepare(recipe, log=lambda _m: None)
    assert len(ctx.splits.train) > 0


def _recipe(write, body: str) -> Path:
    write("d.yaml", "name: d\ntask: image-classification\ndata: {source: digits}\nmodel: {name: lenet300_100}\n")
    return write("r.yaml", body)


def test_overrides_and_defaults(write):
    path = _recipe(write, "domain: d.yaml\nstages:\n  - train: {epochs: 60, lr: 0.001}\n")
    r = load_recipe(path, ["stages.0.train.epochs=5", "seed=7"])
    assert r.seed == 7 and r.stages[0].config.epochs == 5 and r.stages[0].config.batch_size == 64


def test_set_changes_a_domain_named_by_path_as_it_would_an_inline_one(write):
    path = _recipe(write, "domain: d.yaml\nstages:\n  - train: {epochs: 60, lr: 0.001}\n")
    r = load_recipe(path, ["domain.data.fold={index: 2, of: 3}", "domain.data.seed=4", "seed=7"])
    assert r.seed == 7 and r.domain.data.seed == 4 and (r.domain.data.fold.index, r.domain.data.fold.of) == (2, 3)
    assert r.domain.source == str(path.parent / "d.yaml") and load_recipe(path).domain.data.fold is None
    with pytest.raises(ConfigError, match=r"d.yaml: data.fold: index must be below of \(3\)"):
        load_recipe(path, ["domain.data.fold={index: 3, of: 3}"])
    with pytest.raises(ConfigError, match=r"d.yaml: data.fold.of: must be >= 2"):
        load_recipe(path, ["domain.data.fold={index: 0, of: 1}"])


@pytest.mark.parametrize("body, message", [
    ("domain: d.yaml\nstages:\n  - train: {epochs: 0, lr: 0.001}\n",
     "r.yaml: stages[0].train.epochs: must be a positive integer"),
    ("domain: d.yaml\nstages:\n  - train: {epochs: 3, lr: 0.001, momentum: 0.9}\n",
     "r.yaml: stages[0].train.momentum: unknown key"),
    ("domain: d.yaml\nstages:\n  - train: {epochs: three, lr: 0.001}\n",
     "r.yaml: stages[0].train.epochs: must be an integer"),
    ("domain: d.yaml\nstages:\n  - shrink: {}\n", "r.yaml: stages[0].shrink: unknown stage"),
    ("domain: d.yaml\nstages: []\n", "r.yaml: stages: must be a non-empty list"),
    ("domain: d.yaml\nseed: -1\nstages:\n  - train: {epochs: 1, lr: 0.1}\n", "r.yaml: seed: must be"),
    ("domain: missing.yaml\nstages:\n  - train: {epochs: 1, lr: 0.1}\n", "domain: file not found:"),
    ("stages:\n  - train: {epochs: 1, lr: 0.1}\n", "r.yaml: domain: required"),
    ("domain: {name: x, task: image-classification, data: {source: digits}, model: {name: lenet5}, foo: 1}\n"
     "stages:\n  - train: {epochs: 1, lr: 0.1}\n", "r.yaml: domain.foo: unknown key"),
])
def test_bad_recipes_name_file_and_field(write, body, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(_recipe(write, body))
    assert message in str(err.value)


_T, _K = "  - train: {epochs: 1, lr: 0.1}\n", "  - quantize: {method: kmeans, bits: 4}\n"


@pytest.mark.parametrize("after, message", [
    ("  - prune: {method: magnitude, sparsity: 0.5}\n",
     "r.yaml: stages[2].prune: comes after stages[1].quantize, whose quantized layers it cannot prune: prune before "
     "quantizing"),
    ("  - quantize: {method: weight, bits: 8}\n",
     "r.yaml: stages[2].quantize: the model is quantized already (stages[1].quantize): one quantize stage"),
])
def test_stages_a_quantize_stage_would_leave_without_effect_are_refused(write, after, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(_recipe(write, "domain: d.yaml\nstages:\n" + _T + _K + after))
    assert message in str(err.value)


@pytest.mark.parametrize("method", ["static", "dynamic"])
@pytest.mark.parametrize("after", ["train: {epochs: 1, lr: 0.1}", "distill: {teacher: baseline, epochs: 1, lr: 0.1}"])
def test_training_an_int8_model_is_refused_and_a_codebook_model_may_train(write, method, after):
    body = f"domain: d.yaml\nstages:\n{_T}  - quantize: {{method: {method}, bits: 8}}\n  - {after}\n"
    with pytest.raises(ConfigError, match=rf"stages\[2\]\.{after.split(':')[0]}: would train the {method} int8 "
                                          rf"model of stages\[1\]\.quantize.*quantize with method qat"):
        load_recipe(_recipe(write, body))
    load_recipe(_recipe(write, f"domain: d.yaml\nstages:\n{_T}{_K}  - {after}\n"))  # centroids fine-tune


@pytest.mark.parametrize("cut", ["structured, sparsity: 0.3", "activation, threshold: 0.1"])
def test_removing_channels_after_masking_weights_is_refused(write, cut):
    body = f"domain: d.yaml\nstages:\n{_T}  - prune: {{method: magnitude, sparsity: 0.5}}\n" \
           f"  - prune: {{method: {cut}}}\n"
    with pytest.raises(ConfigError, match=r"stages\[2\]\.prune: removes channels after stages\[1\]\.prune masked "
                                          r"weights.*remove channels first, then mask$"):
        load_recipe(_recipe(write, body))
    load_recipe(_recipe(write, f"domain: d.yaml\nstages:\n{_T}  - prune: {{method: {cut}}}\n"
                               f"  - prune: {{method: magnitude, sparsity: 0.5}}\n"))


def test_a_new_student_after_quantizing_is_a_float_model_again(write):
    load_recipe(_recipe(write, "domain: d.yaml\nstages:\n" + _T + _K + "  - distill: {teacher: baseline, student: "
                               "{name: lenet300_100, kwargs: {width: 0.5}}, epochs: 1, lr: 0.1}\n"
                               "  - prune: {method: magnitude, sparsity: 0.5}\n"))


def test_check_catches_data_that_does_not_fit_the_model(write):
    write("d2.yaml", "name: d\ntask: image-classification\ndata: {source: mnist1d}\nmodel: {name: lenet5}\n")
    path = write("r2.yaml", "domain: d2.yaml\nstages:\n  - train: {epochs: 1, lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"d2.yaml: model: expects inputs of shape \(N, 1, 8, 8\)"):
        prepare(load_recipe(path))
