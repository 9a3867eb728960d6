import pytest

from torchslim._errors import ConfigError
from torchslim.prune._select import LayerSelector, count

from .models import MLP, TransformerClassifier


def test_count_rounds_half_up():
    assert count(0.9, 100) == 90
    assert count(0.5, 3) == 2
    assert count(0.0, 7) == 0


def test_ignore_exact_and_regex():
    sel = LayerSelector(MLP(), 0.5, ["fc3", "re:fc[12]"])
    assert sel.is_ignored("fc3") and sel.is_ignored("fc1") and sel.is_ignored("fc2")
    with pytest.raises(ConfigError):  # a pattern must match a whole name
        LayerSelector(MLP(), 0.5, ["re:fc"])


def test_ignore_applies_inside_a_module():
    sel = LayerSelector(TransformerClassifier(), 0.5, ["encoder.layers.0"])
    assert sel.is_ignored("encoder.layers.0.linear1")
    assert not sel.is_ignored("encoder.layers.1.linear1")


def test_overrides_exact_beats_regex():
    sel = LayerSelector(MLP(), 0.5, (), {"re:fc.*": 0.3, "fc1": 0.95})
    assert sel.sparsity_for("fc1") == 0.95
    assert sel.sparsity_for("fc2") == 0.3
    assert sel.field_for("fc2") == "overrides.re:fc.*"
    assert LayerSelector(MLP(), 0.5).sparsity_for("fc2") == 0.5


@pytest.mark.parametrize("ignore, overrides, field", [
    (["fc1", "fc9"], {}, "ignore[1]"),
    (["re:conv.*"], {}, "ignore[0]"),
    ([], {"fc9": 0.5}, "overrides.fc9"),
    ([], {"re:.*classifier.*": 0.5}, "overrides.re:.*classifier.*"),
])
def test_unmatched_names_are_errors(ignore, overrides, field):
    with pytest.raises(ConfigError) as err:
        LayerSelector(MLP(), 0.5, ignore, overrides)
    assert err.value.field == field
