import pytest

from torchslim._errors import ConfigError
from torchslim.quantize import (CalibrationConfig, DynamicConfig, FinetuneConfig, KMeansConfig, PerChannel, PerGroup,
                                QATConfig, StaticConfig, WeightOnlyConfig, config_from_mapping, config_to_mapping)

RECIPE_STAGES = [
    {"method": "static", "bits": 8, "granularity": "channel", "calibration": {"batches": 8, "observer": "minmax"}},
    {"method": "dynamic", "bits": 8},
    {"method": "weight", "bits": 4, "granularity": "group", "group_size": 32, "symmetric": True},
    {"method": "kmeans", "bits": 4, "finetune": {"epochs": 10, "lr": 0.0001}},
    {"method": "qat", "bits": 4, "granularity": "channel", "finetune": {"epochs": 10, "lr": 0.0001}},
    {"method": "static", "bits": 8, "max_metric_drop": 0.003, "ignore": ["re:.*fc3.*"]},
    {"method": "weight", "bits": 8, "overrides": {"fc1": 4}},
]


def test_recipe_examples_build_expected_configs():
    configs = [config_from_mapping(d) for d in RECIPE_STAGES]
    assert configs[0] == StaticConfig(calibration=CalibrationConfig(batches=8, observer="minmax"))
    assert configs[0].granularity == PerChannel()
    assert configs[1] == DynamicConfig()
    assert configs[2].granularity == PerGroup(32) and configs[2].symmetric
    assert configs[3] == KMeansConfig(bits=4, finetune=FinetuneConfig(epochs=10, lr=1e-4))
    assert isinstance(configs[4], QATConfig) and configs[4].bits == 4
    assert configs[5].max_metric_drop == 0.003 and configs[5].ignore == ("re:.*fc3.*",)
    assert dict(configs[6].overrides) == {"fc1": 4}


@pytest.mark.parametrize("stage", RECIPE_STAGES)
def test_mapping_round_trip(stage):
    cfg = config_from_mapping(stage)
    assert config_from_mapping(config_to_mapping(cfg)) == cfg


@pytest.mark.parametrize("mapping, field", [
    ({"method": "static", "overrides": {"fc1": 4}}, "overrides"),  # inapplicable: int8 kernels only
    ({"method": "dynamic", "calibration": {"batches": 2}}, "calibration"),
    ({"method": "weight", "bitz": 4}, "bitz"),
    ({"method": "static", "calibration": {"batches": 2, "obsrver": "mse"}}, "calibration.obsrver"),
    ({"method": "static", "calibration": {"observer": "kl"}}, "calibration.observer"),
    ({"method": "static", "calibration": {"batches": 0}}, "calibration.batches"),
    ({"method": "gptq"}, "method"),
    ({"method": "weight", "bits": 9}, "bits"),
    ({"method": "kmeans", "bits": 1}, "bits"),
    ({"method": "static", "bits": 4}, "bits"),
    ({"method": "weight", "granularity": "group"}, "group_size"),
    ({"method": "weight", "granularity": "channel", "group_size": 8}, "group_size"),
    ({"method": "static", "granularity": "group"}, "granularity"),
    ({"method": "weight", "granularity": "row"}, "granularity"),
    ({"method": "weight", "overrides": {"fc1": 12}}, "overrides.fc1"),
    ({"method": "static", "ignore": ["re:("]}, "ignore"),
    ({"method": "static", "max_metric_drop": 2}, "max_metric_drop"),
    ({"method": "qat", "finetune": {"epochs": -1}}, "finetune.epochs"),
    ({"method": "qat", "bits": 8, "symmetric": False}, "symmetric"),
])
def test_bad_mappings_name_the_field(mapping, field):
    with pytest.raises(ConfigError) as err:
        config_from_mapping(mapping)
    assert err.value.field == field, str(err.value)


def test_configs_are_frozen_and_unhashable_defaults_are_not_shared():
    a, b = WeightOnlyConfig(), WeightOnlyConfig()
    assert a.overrides is not b.overrides or len(a.overrides) == 0
    with pytest.raises(TypeError):
        a.overrides["fc1"] = 4  # read-only mapping
