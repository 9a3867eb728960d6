import pytest

from torchslim._errors import ConfigError
from torchslim.prune import (ActivationConfig, Calibration, Finetune, MagnitudeConfig, Schedule, StructuredConfig,
                             config_from_mapping)


def test_recipe_examples_map_one_to_one():
    m = config_from_mapping({"method": "magnitude", "sparsity": 0.9, "scope": "global",
                             "finetune": {"epochs": 20, "lr": 0.0005}})
    assert m == MagnitudeConfig(sparsity=0.9, scope="global", finetune=Finetune(epochs=20, lr=0.0005))
    a = config_from_mapping({"method": "activation", "threshold": 0.01, "calibration": {"batches": 8}})
    assert a == ActivationConfig(threshold=0.01, calibration=Calibration(batches=8))
    s = config_from_mapping({
        "method": "structured", "sparsity": 0.5, "importance": "l2", "calibration": {"batches": 8},
        "schedule": {"kind": "polynomial", "steps": 10}, "finetune": {"epochs": 20, "lr": 0.0005},
        "ignore": ["fc3", "re:.*classifier.*"], "overrides": {"fc1": 0.95, "re:conv.*": 0.3}})
    assert s.schedule == Schedule("polynomial", 10)
    assert s.ignore == ("fc3", "re:.*classifier.*")
    assert s.overrides == {"fc1": 0.95, "re:conv.*": 0.3}


def test_defaults():
    m = config_from_mapping({"method": "magnitude", "sparsity": 0.5})
    assert (m.scope, m.schedule, m.finetune, m.ignore, dict(m.overrides)) == ("layer", Schedule("oneshot", 1),
                                                                               None, (), {})
    s = StructuredConfig(sparsity=0.5)
    assert (s.importance, s.schedule.kind, s.finetune) == ("l2", "oneshot", None)


def test_defaults_are_not_shared():
    a, b = MagnitudeConfig(sparsity=0.1), MagnitudeConfig(sparsity=0.2)
    assert a.overrides is not b.overrides


@pytest.mark.parametrize("data, field", [
    ({"method": "magnitude", "sparsity": 0.5, "threshold": 0.1}, "threshold"),  # inapplicable key
    ({"method": "activation", "threshold": 0.1, "sparsity": 0.5}, "sparsity"),
    ({"method": "activation", "threshold": 0.1, "schedule": {"kind": "oneshot"}}, "schedule"),
    ({"method": "magnitude", "sparsity": 0.5, "calibration": {"batches": 2}}, "calibration"),
    ({"method": "magnitude", "sparsity": 0.5, "importance": "l1"}, "importance"),
    ({"method": "structured", "sparsity": 0.5, "scope": "global"}, "scope"),
    ({"method": "magnitude", "sparsity": 0.5, "bogus": 1}, "bogus"),  # unknown key
    ({"method": "magnitude"}, "sparsity"),  # missing
    ({"method": "activation"}, "threshold"),
    ({"method": "nope", "sparsity": 0.5}, "method"),
    ({"sparsity": 0.5}, "method"),
    ({"method": "magnitude", "sparsity": 1.0}, "sparsity"),  # outside [0, 1)
    ({"method": "magnitude", "sparsity": -0.1}, "sparsity"),
    ({"method": "magnitude", "sparsity": "half"}, "sparsity"),
    ({"method": "magnitude", "sparsity": 0.5, "scope": "model"}, "scope"),
    ({"method": "structured", "sparsity": 0.5, "importance": "l3"}, "importance"),
    ({"method": "activation", "threshold": 1.5}, "threshold"),
    ({"method": "structured", "sparsity": 0.5, "schedule": {"kind": "cubic"}}, "schedule.kind"),
    ({"method": "structured", "sparsity": 0.5, "schedule": {"kind": "polynomial", "steps": 0}}, "schedule.steps"),
    ({"method": "structured", "sparsity": 0.5, "schedule": {"kind": "oneshot", "steps": 3}}, "schedule.steps"),
    ({"method": "structured", "sparsity": 0.5, "schedule": {"every": 3}}, "schedule.every"),
    ({"method": "structured", "sparsity": 0.5, "finetune": {"epochs": 2}}, "finetune.lr"),
    ({"method": "structured", "sparsity": 0.5, "finetune": {"epochs": 2, "lr": 0}}, "finetune.lr"),
    ({"method": "structured", "sparsity": 0.5, "finetune": {"epochs": -1, "lr": 0.1}}, "finetune.epochs"),
    ({"method": "structured", "sparsity": 0.5, "finetune": {"epochs": 1, "lr": 0.1, "batch_size": 0}},
     "finetune.batch_size"),
    ({"method": "structured", "sparsity": 0.5, "finetune": {"epochs": 1, "lr": 0.1, "augment": "flip"}},
     "finetune.augment"),
    ({"method": "structured", "sparsity": 0.5, "calibration": {"batches": 0}}, "calibration.batches"),
    ({"method": "structured", "sparsity": 0.5, "calibration": 8}, "calibration"),
    ({"method": "structured", "sparsity": 0.5, "ignore": "fc3"}, "ignore"),
    ({"method": "structured", "sparsity": 0.5, "ignore": ["fc1", "re:("]}, "ignore[1]"),
    ({"method": "structured", "sparsity": 0.5, "overrides": {"fc1": 1.2}}, "overrides.fc1"),
    ({"method": "structured", "sparsity": 0.5, "overrides": ["fc1"]}, "overrides"),
    ({"method": "structured", "sparsity": 0.5, "overrides": {"re:(": 0.5}}, "overrides.re:("),
    ({"method": "structured", "sparsity": 0.5, "calibration": None}, "calibration"),  # only finetune may be null
    ({"method": "magnitude", "sparsity": 0.5, "schedule": None}, "schedule"),
    ({"method": "structured", "sparsity": 0.5, "finetune": {"epochs": 1, "lr": float("inf")}}, "finetune.lr"),
    ({"method": "structured", "sparsity": 0.5, "finetune": {"epochs": 1, "lr": float("nan")}}, "finetune.lr"),
])
def test_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        config_from_mapping(data)
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_null_finetune_is_allowed():
    assert config_from_mapping({"method": "structured", "sparsity": 0.5, "finetune": None}).finetune is None


@pytest.mark.parametrize("make, field", [
    (lambda: MagnitudeConfig(sparsity=0.5, schedule=None), "schedule"),
    (lambda: MagnitudeConfig(sparsity=0.5, schedule={"kind": "polynomial", "steps": 2}), "schedule"),
    (lambda: StructuredConfig(sparsity=0.5, calibration=None), "calibration"),
    (lambda: StructuredConfig(sparsity=0.5, finetune={"epochs": 1, "lr": 0.1}), "finetune"),
    (lambda: ActivationConfig(threshold=0.1, calibration=8), "calibration"),
    (lambda: ActivationConfig(threshold=0.1, finetune=Schedule()), "finetune"),
])
def test_constructors_type_check_their_value_objects(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field == field
