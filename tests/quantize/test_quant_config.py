import dataclasses

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
    ({"method": "static", "calibration": {"observer": "percentile", "percentile": "high"}}, "calibration.percentile"),
    ({"method": "static", "calibration": {"percentile": None}}, "calibration.percentile"),
    ({"method": "static", "calibration": {"percentile": True}}, "calibration.percentile"),
    ({"method": "weight", "ignore": None}, "ignore"),
    ({"method": "weight", "ignore": 3}, "ignore"),
    ({"method": "static", "calibration": None}, "calibration"),
    ({"method": "qat", "bits": 8, "calibration": None}, "calibration"),
    ({"method": "qat", "finetune": None}, "finetune"),
    ({"method": "weight", "symmetric": "yes"}, "symmetric"),
    ({"method": "qat", "bits": 4, "symmetric": 1}, "symmetric"),
    ({"method": "kmeans", "finetune": {"lr": True}}, "finetune.lr"),
    ({"method": "weight", "max_metric_drop": True}, "max_metric_drop"),
])
def test_bad_mappings_name_the_field(mapping, field):
    with pytest.raises(ConfigError) as err:
        config_from_mapping(mapping)
    assert err.value.field == field, str(err.value)


def test_bare_string_ignore_is_one_pattern():
    assert config_from_mapping({"method": "weight", "ignore": "fc1"}).ignore == ("fc1",)
    assert WeightOnlyConfig(ignore="re:fc[12]").ignore == ("re:fc[12]",)


def test_optional_sections_may_be_null_where_unused():
    assert config_from_mapping({"method": "kmeans", "finetune": None}).finetune is None
    assert config_from_mapping({"method": "qat", "bits": 4, "calibration": None}).calibration is None


def test_configs_are_frozen_and_do_not_share_the_source_mapping():
    a, b = WeightOnlyConfig(), WeightOnlyConfig()
    assert a.overrides is not b.overrides or len(a.overrides) == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.bits = 2
    with pytest.raises(TypeError):
        a.overrides["fc1"] = 4  # read-only mapping
    source = {"method": "weight", "bits": 8, "overrides": {"fc1": 4}, "ignore": ["fc3"]}
    cfg = config_from_mapping(source)
    source["overrides"]["fc2"] = 2
    source["ignore"].append("fc2")
    assert dict(cfg.overrides) == {"fc1": 4} and cfg.ignore == ("fc3",)
