"""KDConfig and config_from_mapping: recipe keys map one-to-one, bad values name their key."""

import pytest

from torchslim._errors import ConfigError
from torchslim.distill import FeatureMatch, KDConfig, Regularization, config_from_mapping

RECIPE = {
    "teacher": "baseline",
    "student": {"name": "mnist1d_cnn", "kwargs": {"width": 0.25}},
    "temperature": 4.0,
    "alpha": 0.9,
    "features": [{"student": "fc1", "teacher": "fc1", "weight": 0.1}],
    "regularization": {"kind": "l2", "weight": 0.0001},
    "epochs": 40,
    "lr": 0.001,
    "batch_size": 32,
    "augment": "shift",
}


def test_recipe_mapping_builds_config_and_round_trips():
    cfg = config_from_mapping(RECIPE)
    assert cfg.features == (FeatureMatch("fc1", "fc1", 0.1),)
    assert cfg.regularization == Regularization("l2", 0.0001)
    assert cfg.student == {"name": "mnist1d_cnn", "kwargs": {"width": 0.25}}
    assert (cfg.temperature, cfg.alpha, cfg.epochs, cfg.lr, cfg.batch_size, cfg.augment) == (
        4.0, 0.9, 40, 0.001, 32, "shift")
    assert cfg.to_mapping() == RECIPE
    assert config_from_mapping(cfg.to_mapping()) == cfg


def test_defaults():
    cfg = config_from_mapping({})
    assert cfg == KDConfig()
    assert (cfg.teacher, cfg.student, cfg.batch_size, cfg.augment) == ("baseline", None, 64, "none")
    assert (cfg.features, cfg.regularization) == ((), None)


@pytest.mark.parametrize(
    "patch, field, words",
    [
        ({"temperature": 0}, "temperature", "> 0"),
        ({"temperature": -1.5}, "temperature", "> 0"),
        ({"temperature": "hot"}, "temperature", "number"),
        ({"alpha": 1.01}, "alpha", "[0, 1]"),
        ({"alpha": -0.1}, "alpha", "[0, 1]"),
        ({"alpha": True}, "alpha", "number"),
        ({"regularization": {"kind": "l3", "weight": 0.1}}, "regularization.kind", "l1, l2"),
        ({"regularization": {"kind": "l1", "weight": -0.1}}, "regularization.weight", ">= 0"),
        ({"regularization": {"kind": "l1", "lambda": 0.1}}, "regularization.lambda", "unknown key"),
        ({"features": [{"student": "fc1", "teacher": "fc1", "weight": -1}]}, "features[0].weight", ">= 0"),
        ({"features": [{"student": "fc1"}]}, "features[0].teacher", "required"),
        ({"features": [{"student": "fc1", "teacher": "fc1", "wieght": 1}]}, "features[0].wieght", "unknown key"),
        ({"features": "fc1"}, "features", "list"),
        ({"epochs": 0}, "epochs", "positive integer"),
        ({"batch_size": 2.5}, "batch_size", "positive integer"),
        ({"lr": 0}, "lr", "a positive number at most 10"), ({"lr": 1e3}, "lr", "at most 10"),
        ({"teacher": ""}, "teacher", "baseline"),
        ({"student": 3}, "student", "model spec"),
        ({"temprature": 4}, "temprature", "unknown key"),
    ],
)
def test_bad_values_name_their_key(patch, field, words):
    with pytest.raises(ConfigError) as err:
        config_from_mapping({**RECIPE, **patch})
    assert err.value.field == field
    assert words in err.value.message


def test_unknown_key_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"temprature": 4})
    assert "alpha" in err.value.message and "temperature" in err.value.message


def test_dataclass_validates_directly_and_keeps_its_own_student_copy():
    with pytest.raises(ConfigError, match="temperature"):
        KDConfig(temperature=0.0)
    spec = {"name": "lenet5"}
    cfg = KDConfig(student=spec, features=[FeatureMatch("a", "b")])
    spec["name"] = "changed"
    assert cfg.student == {"name": "lenet5"}
    assert isinstance(cfg.features, tuple)
