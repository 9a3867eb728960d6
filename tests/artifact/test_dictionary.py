"""The manifest's zstd dictionary: generated from the format's own classes, free of the shipped recipes' values,
and as much help to a user's manifest as to the demo's."""

import json
import re
from pathlib import Path

import pytest

from torchslim.artifact._dictionary import MANIFEST_DICTIONARY
from torchslim.artifact._vocabulary import (choice_examples, manifest_dictionary, nested_examples, skeleton,
                                            stage_examples)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "digits" / "deep_compression.yaml"


def _pairs(value, key=None):
    """Every (key, scalar value) pair of nested JSON data, as canonical ``"key":value`` text."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _pairs(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _pairs(v, key)
    elif key is not None:
        yield json.dumps({key: value}, separators=(",", ":"), ensure_ascii=False)[1:-1]


def _shipped_recipes():
    from torchslim.recipe import load_recipe

    return [load_recipe(path) for path in sorted((ROOT / "recipes").rglob("*.yaml"))]


def test_the_committed_dictionary_is_the_one_the_format_classes_generate():
    """Regenerate with ``python -m torchslim.artifact._vocabulary`` (and bump ARTIFACT_VERSION) when it fails."""
    assert MANIFEST_DICTIONARY == manifest_dictionary()


def test_the_generated_dictionary_does_not_depend_on_which_stage_module_loads_first():
    import subprocess
    import sys

    from cli_support import cli_env

    code = ("import torchslim.distill.stage, torchslim.export.stage\n"  # they register before prune and quantize
            "from torchslim.stages import STAGES\n"
            "from torchslim.artifact._vocabulary import manifest_dictionary\n"
            "from torchslim.artifact._dictionary import MANIFEST_DICTIONARY\n"
            "assert list(STAGES)[-1] != 'export', list(STAGES)\n"
            "assert manifest_dictionary() == MANIFEST_DICTIONARY\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_the_dictionary_spells_every_stage_method_and_enumerated_value():
    text = MANIFEST_DICTIONARY.decode()
    for value in ("magnitude", "structured", "activation", "kmeans", "qat", "static", "dynamic", "weight",
                  "onnxruntime", "top5", "sequence-classification", "shift+mixup", "percentile", "taylor"):
        assert f'"{value}"' in text
    for stage in stage_examples():
        (name, body), = stage.items()
        assert f'{{"{name}":{{' in text
        assert all(f'"{key}":' in text for key in body)


def test_the_dictionary_holds_no_value_a_shipped_recipe_or_domain_chose():
    from torchslim.data import SOURCES
    from torchslim.domain import Domain
    from torchslim.models import BUILTIN_MODELS
    from torchslim.runner import _portable_recipe

    text = MANIFEST_DICTIONARY.decode()
    for name in [*BUILTIN_MODELS, *SOURCES, "lenet", "load_digits", "(N, 1, 8, 8)"]:
        assert name not in text
    assert not re.search(r'"(train|val|test)":\d', text)  # no split size
    enumerated = set(choice_examples())
    defaults = {pair for example in [*stage_examples(), *nested_examples()] for pair in _pairs(example)} | set(
        _pairs(skeleton(Domain)))
    recipes = _shipped_recipes()
    assert len(recipes) >= 10
    chosen = set()
    for recipe in recipes:
        domain = recipe.domain.to_dict()
        for value in (domain["name"], domain["data"]["source"], domain["model"]["name"]):
            if value is not None:
                assert json.dumps(value) not in text, value
        for data in (domain, _portable_recipe(recipe)):
            chosen |= {pair for pair in _pairs(data) if pair not in defaults and pair not in enumerated}
    assert '"sparsity":0.7' in chosen and '"epochs":60' in chosen  # what the check looks for
    assert [pair for pair in sorted(chosen) if pair in text] == []


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(the manifest body the runner writes for the demo recipe's model, its stored bytes); before training: the
    keys and the recipe are what matters here."""
    from torchslim.artifact import save_artifact
    from torchslim.artifact._format import _open
    from torchslim.recipe import load_recipe
    from torchslim.runner import _manifest_extra, prepare

    ctx = prepare(load_recipe(DEMO), log=lambda _message: None)
    extra = {**_manifest_extra(ctx), "metrics": {"metric": "accuracy", "value": 0.9694444444444444},
             "baseline": {"architecture": ctx.architecture, "value": 0.975, "size_bytes": 202828, "params": 50610}}
    path = save_artifact(ctx.model, tmp_path_factory.mktemp("demo") / "a", architecture=ctx.architecture,
                         extra=extra)
    manifest, _, stored = _open(path)
    return {k: v for k, v in manifest.items() if k not in ("format", "version")}, stored


def _compressed_bytes(manifest, dictionary):
    import zstandard

    from torchslim.artifact._codec import zstd_compress
    from torchslim.artifact._format import _canonical

    return len(zstd_compress(_canonical(manifest),
                             zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)))


def test_a_users_manifest_gets_the_same_help_as_the_demos(demo):
    """The demo's names replaced by a user's of the same lengths: the compressed manifest keeps its size."""
    demo, stored = demo
    assert stored == 32 + _compressed_bytes(demo, MANIFEST_DICTIONARY)  # sha256 + the frame: what is measured
    text = json.dumps(demo)
    for shipped, own in (("lenet300_100", "mlp_64_32_16"), ("digits", "glyphs"), ("(N, 1, 8, 8)", "(N, 1, 9, 7)"),
                         ('"fc', '"ln')):
        assert shipped in text and len(shipped) == len(own)
        text = text.replace(shipped, own)
    user = json.loads(text)
    with_dictionary = _compressed_bytes(demo, MANIFEST_DICTIONARY), _compressed_bytes(user, MANIFEST_DICTIONARY)
    # within 2 % (which letters the names use shifts the literals' code lengths a little); format version 2's
    # dictionary, holding the shipped recipes' text, made this user's manifest 26 % larger than the demo's
    assert abs(with_dictionary[0] - with_dictionary[1]) <= 0.02 * with_dictionary[0], with_dictionary
    # and the dictionary helps both: key names, defaults and enumerated values cost a fraction of their length
    assert with_dictionary[1] < 0.75 * _compressed_bytes(user, b"\0")


def test_every_manifest_key_is_in_the_dictionary(demo):
    manifest, _ = demo
    text = MANIFEST_DICTIONARY.decode()
    missing = []

    def visit(value, names):
        if isinstance(value, dict):
            for k, v in value.items():
                if names and f'"{k}":' not in text:
                    missing.append(k)
                visit(v, names=k != "kwargs")  # a model's keyword arguments are the model's, not the format's
        elif isinstance(value, list):
            for v in value:
                visit(v, names)

    assert {"architecture", "baseline", "data", "domain", "labels", "recipe", "tensors", "versions"} <= set(manifest)
    for key, value in manifest.items():
        if f'"{key}":' not in text:
            missing.append(key)
        visit(value, names=key != "tensors")  # tensor names are the model's; their entries' keys are the format's
    assert missing == []
