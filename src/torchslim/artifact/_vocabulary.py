"""The manifest's vocabulary, gathered from the classes that define it: the source of ``_dictionary.py``.

The zstd dictionary that primes manifest compression must help every user's manifest as much as the demo's, so
it holds only what the format itself defines: key names (manifest, domain, data, stage configs, tensor table,
quantized layers, versions), the config classes' defaults, enumerated values (stage and method names,
augmentations, encodings, dtypes, metrics, runtimes, tasks) and the names the data module gives classes a source
leaves unnamed ("0", "1", ...). It holds no value a recipe or domain chooses (domain names, data sources, model
names, layer names, split sizes, preprocessing text) and no library version.

Everything is written as canonical JSON fragments (sorted keys, no spaces), the way ``_format`` writes the
manifest, so runs of keys with their defaults match in one piece; run-specific values are left out.

    PYTHONPATH=src python -m torchslim.artifact._vocabulary   # rewrites _dictionary.py from these classes

The test suite checks that ``_dictionary.MANIFEST_DICTIONARY`` equals :func:`manifest_dictionary`. The
dictionary belongs to a format version: a new one needs a new ``ARTIFACT_VERSION``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal

import pydantic

_BLANK = "\x00blank\x00"  # a value the dictionary leaves out (run-specific): written as nothing
_FRAGMENT_SEPARATOR = "\n"
LABELS = 16  # classes whose fallback names ("0", "1", ...: a source that names none) the dictionary spells


def _json(value: Any) -> str:
    """Canonical JSON, as the manifest is written, with blank values removed (``"key":`` then what follows)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace(json.dumps(_BLANK), "")


# ---- config classes: their fields, defaults, nested classes and choices -----------------------------------------

def _is_config_class(tp: Any) -> bool:
    return isinstance(tp, type) and (dataclasses.is_dataclass(tp) or issubclass(tp, pydantic.BaseModel))


def _fields(cls: type) -> list[tuple[str, bool, Any, Any]]:
    """(name, required, default, annotation) of each user-facing field of a dataclass or pydantic config."""
    if issubclass(cls, pydantic.BaseModel):
        return [(name, f.is_required(), None if f.is_required() else f.get_default(call_default_factory=True),
                 f.annotation) for name, f in cls.model_fields.items() if not f.exclude]
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        out.append((f.name, required, default, hints[f.name]))
    return out


def _members(tp: Any) -> list[Any]:
    """The types an annotation admits (unions and ``tuple[X, ...]`` unpacked)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType, tuple):
        return [m for arg in typing.get_args(tp) if arg is not Ellipsis for m in _members(arg)]
    return [tp]


def _nested_classes(tp: Any) -> list[type]:
    return [m for m in _members(tp) if _is_config_class(m)]


def _literal_choices(tp: Any) -> tuple[str, ...]:
    return tuple(v for m in _members(tp) if typing.get_origin(m) is Literal for v in typing.get_args(m))


def _plain(value: Any) -> Any:
    """A default as JSON data (value objects as their fields, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, typing.Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def skeleton(cls: type) -> dict[str, Any]:
    """The JSON object a config class dumps to: defaults filled in, required values blank (nested classes as
    their own skeletons)."""
    out: dict[str, Any] = {}
    for name, required, default, tp in _fields(cls):
        nested = _nested_classes(tp)
        if required and nested and typing.get_origin(tp) is not tuple:
            out[name] = skeleton(nested[0])
        elif required:  # an enumerated value: its first choice (e.g. the first task); a string: ""; else blank
            out[name] = next(iter(_literal_choices(tp)), "" if str in _members(tp) else _BLANK)
        else:
            out[name] = _plain(default)
    return out


def _placeholder(tp: Any) -> Any:
    """A valid stand-in for a required number (blanked again after the config is dumped)."""
    return 1 if int in _members(tp) else 0.5


def _config_classes(root: type) -> Iterator[type]:
    """``root`` and every config class nested in its fields, depth first, each once."""
    seen: list[type] = []

    def visit(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        for _name, _required, _default, tp in _fields(cls):
            for nested in _nested_classes(tp):
                visit(nested)

    visit(root)
    return iter(seen)


# ---- the pieces of the vocabulary -------------------------------------------------------------------------------

_PIPELINE = ("train", "prune", "quantize", "distill", "export")


def _stages() -> dict[str, Any]:
    """The registered stages in the pipeline's order, then any other in name order: the registry's own order
    depends on which module was imported first."""
    from torchslim.stages import STAGES

    order = [name for name in _PIPELINE if name in STAGES] + sorted(set(STAGES) - set(_PIPELINE))
    return {name: STAGES[name] for name in order}


def _methods() -> dict[str, dict[str, type]]:
    """{stage: {method: config class}} for stages whose ``method`` key picks the config."""
    from torchslim.prune.config import METHODS as PRUNE_METHODS
    from torchslim.quantize.config import METHODS as QUANTIZE_METHODS

    return {"prune": dict(PRUNE_METHODS), "quantize": dict(QUANTIZE_METHODS)}


def _choices() -> dict[str, tuple[str, ...]]:
    """{field name: its allowed strings} for the string-valued options the dataclass configs check by hand."""
    from torchslim.distill.config import REGULARIZATION_KINDS
    from torchslim.prune.config import IMPORTANCES, SCHEDULE_KINDS, SCOPES
    from torchslim.quantize.granularity import GRANULARITY_KEYS
    from torchslim.quantize.observers import OBSERVERS
    from torchslim.train import AUGMENTATIONS

    return {"augment": AUGMENTATIONS, "scope": SCOPES, "importance": IMPORTANCES,
            "kind": SCHEDULE_KINDS + REGULARIZATION_KINDS, "observer": tuple(OBSERVERS),
            "granularity": GRANULARITY_KEYS, **{k: tuple(v) for k, v in _methods().items()}}


def stage_examples() -> list[dict[str, Any]]:
    """One ``{stage: config}`` per registered stage and method, dumped by the stage's own code as the manifest's
    recipe records it (defaults filled in), required values blank."""
    examples = []
    for name, handler in _stages().items():
        variants = _methods().get(name, {None: handler.config})
        for method, cls in variants.items():
            required = {f: _placeholder(tp) for f, req, _d, tp in _fields(cls) if req}
            body = {**({"method": method} if method else {}), **required}
            dumped = handler.parse(body, prefix=name, source=None).model_dump(mode="json")
            examples.append({name: {k: (_BLANK if k in required else v) for k, v in dumped.items()}})
    return examples


def nested_examples() -> list[dict[str, Any]]:
    """``{field: skeleton}`` for every config class a stage or the domain nests (finetune, calibration, schedule,
    sensitivity, regularization, features, constraints, ...), as given in a recipe."""
    from torchslim.domain import Domain
    methods = [c for m in _methods().values() for c in m.values()]
    roots = [Domain, *(h.config for h in _stages().values()), *methods]
    spelled = set(_choices())  # fields written as a spelling (granularity: "channel"), not as their value object
    out, seen = [{"student": {"kwargs": {}, "name": _BLANK}}], set()  # a distillation student: an architecture
    for root in roots:
        for cls in _config_classes(root):
            for name, _required, _default, tp in _fields(cls):
                for nested in _nested_classes(tp):
                    if nested in methods or name in spelled:  # a method's config is its stage's own body
                        continue
                    value = skeleton(nested)
                    example = {name: [value] if typing.get_origin(tp) is tuple else value}
                    if _json(example) not in seen:
                        seen.add(_json(example))
                        out.append(example)
    return out


def choice_examples() -> list[str]:
    """``"field":"choice"`` for every enumerated option (Literal fields of the pydantic configs, and the choices
    the dataclass configs check), each once."""
    from torchslim.domain import Domain
    choices: dict[str, list[str]] = {}
    roots = [Domain, *(h.config for h in _stages().values()), *(c for m in _methods().values() for c in m.values())]
    for root in roots:
        for cls in _config_classes(root):
            for name, _required, _default, tp in _fields(cls):
                for value in _literal_choices(tp):
                    choices.setdefault(name, [])
                    if value not in choices[name]:
                        choices[name].append(value)
    for name, values in _choices().items():
        key = "method" if name in _methods() else name
        for value in values:
            choices.setdefault(key, [])
            if value not in choices[key]:
                choices[key].append(value)
    return [_json({name: value})[1:-1] for name, values in choices.items() for value in values]


def _tensor_entries() -> dict[str, Any]:
    """A tensor table with one entry per stored form (see ``_codec``), keyed by the state-dict names the
    format's own modules give (a layer's name left blank)."""
    from torchslim.artifact._codec import _NP, dtype_name
    from torchslim.quantize._layout import _skeleton_source

    dense = {"bytes": _BLANK, "encoding": "dense", "shape": []}
    sparse = {"bytes": _BLANK, "encoding": "sparse", "entries": _BLANK, "index_bits": _BLANK, "shape": [],
              "zstd": True}
    packed = {"bytes": _BLANK, "dtype": "uint8", "encoding": "packed4", "shape": [], "zstd": True}
    codes = {"bytes": _BLANK, "dtype": "uint8", "encoding": "sparse4", "entries": _BLANK, "index_bits": 4,
             "numel": _BLANK, "shape": [], "zstd": True}
    table: dict[str, Any] = {".bias": {**dense, "dtype": "float32"}, ".weight": {**sparse, "dtype": "float32"}}
    for spec in ({"encoding": "affine", "bits": 4, "shape": [1, 1], "granularity": {"type": "channel", "axis": 0}},
                 {"encoding": "codebook", "bits": 4, "shape": [1, 1]},
                 {"encoding": "fake_quant", "bits": 8, "shape": [1, 1], "symmetric": True,
                  "granularity": {"type": "channel", "axis": 0}}):
        for key, t in _skeleton_source(spec).state_dict().items():
            entry = packed if key == "packed" else {**dense, "dtype": dtype_name(t.dtype), "zstd": True}
            table[f".weight_source.{key}"] = entry
    sparse_codes = {**table, ".weight_source.packed": codes}
    dtypes = [dtype_name(d) for d in _NP] + ["bfloat16"]
    encodings = ["dense", "sparse"] + [f"{form}{b}" for form in ("packed", "sparse") for b in range(1, 9)]
    return {"tables": [table, sparse_codes], "dtypes": dtypes, "encodings": encodings}


def _layer_entries() -> list[dict[str, Any]]:
    """``quantization.layers`` entries as ``describe_quantized_layers`` writes them, one per weight encoding
    (bits: the default of the method that makes it; shape blank), the int8 one with its activation quantizer."""
    from torchslim.quantize._layout import _describe_source, _skeleton_source
    from torchslim.quantize.config import KMeansConfig, QATConfig, StaticConfig, WeightOnlyConfig

    channel = {"type": "channel", "axis": 0}
    entries = []
    for kind, spec, act in (
            ("Linear", {"encoding": "codebook", "bits": KMeansConfig().bits}, None),
            ("Linear", {"encoding": "affine", "bits": WeightOnlyConfig().bits, "granularity": channel}, None),
            ("Conv2d", {"encoding": "affine", "bits": StaticConfig().bits, "granularity": channel},
             {"bits": StaticConfig().bits, "mode": "static"}),
            ("Conv1d", {"encoding": "fake_quant", "bits": QATConfig().bits, "granularity": channel,
                        "symmetric": QATConfig().symmetric}, None)):
        source = _skeleton_source({**spec, "shape": [1, 1]})
        entries.append({"input_quant": act, "kind": kind, "shape": [], **_describe_source(source)})
    return entries


def manifest_skeleton() -> dict[str, Any]:
    """A manifest with every key ``_format`` and the runner write, values blank where a run decides them."""
    from torchslim.artifact._format import INT8_ONNX, TENSORS, _versions
    from torchslim.data._sources import unnamed_labels
    from torchslim.domain import DataSpec, Domain

    data = {**skeleton(DataSpec), "preprocessing": "", "stratified": True, "test": _BLANK, "train": _BLANK,
            "val": _BLANK}
    architecture = {"kwargs": {}, "name": ""}
    shared = {"initializers": {"": {"layer": "", "transpose": True}, " ": {"tensor": "", "transpose": False},
                               "  ": {"part": "W", "rnn": "", "rnn_layer": 0},
                               "   ": {"part": "W", "rnn_codes": "", "rnn_layer": 0}}, "sha256": ""}
    # "architectures" is no manifest key: it spells the factory and in-memory forms of an architecture for zstd
    return {"architecture": architecture, "architectures": [{"factory": "", "kwargs": {}}, {"module": ""}],
            "baseline": {"architecture": architecture, "params": _BLANK, "size_bytes": _BLANK, "value": _BLANK},
            "data": data, "domain": skeleton(Domain), "entropy": "payload", "input_shape": [],
            "labels": unnamed_labels(LABELS), "metrics": {"metric": "accuracy", "value": _BLANK},
            "payloads": {INT8_ONNX: "", TENSORS: ""}, "preprocessing": "",
            "quantization": {"int8_onnx": INT8_ONNX, "int8_onnx_weights": shared, "layers": _BLANK},
            "structure": {"folded_batchnorm": {"": ""}, "projected_attention": []},
            "recipe": {"seed": 0, "stages": _BLANK}, "seed": 0, "tensors": _BLANK,
            "versions": {name: "" for name in sorted(_versions())}}


def manifest_dictionary() -> bytes:
    """The dictionary's bytes: enumerated values and nested configs first, then stage configs, tensor and layer
    entries, and the manifest skeleton last (zstd reaches the end of a dictionary at the smallest offsets)."""
    tensors, layers = _tensor_entries(), _layer_entries()
    parts = [",".join(choice_examples()),
             ",".join(_json(d) for d in [{"dtype": d} for d in tensors["dtypes"]]),
             ",".join(_json({"encoding": e}) for e in tensors["encodings"]),
             *(_json(n) for n in nested_examples()),
             *(_json(s) for s in stage_examples()),
             *(_json(e) for e in layers), *(_json(t) for t in tensors["tables"]), _json(manifest_skeleton())]
    return _FRAGMENT_SEPARATOR.join(parts).encode()


# ---- writing _dictionary.py -------------------------------------------------------------------------------------

_HEADER = '''"""The zstd dictionary the manifest is compressed with: the format's vocabulary, no recipe's values.

A raw-content dictionary primes zstd's history, so key names, config defaults and enumerated values cost a few
bytes instead of their length, for every user's manifest alike. Generated by ``_vocabulary.py`` from the classes
that define the format (``python -m torchslim.artifact._vocabulary``); do not edit by hand. It is part of format
version {version}: changing one byte makes every saved manifest unreadable, so a new dictionary needs a new
``ARTIFACT_VERSION`` (the test suite pins its sha256), and the old ones kept for reading (``_dictionary_v4.py``
to ``_dictionary_v9.py``).
"""

MANIFEST_DICTIONARY = (
'''


def dictionary_module(data: bytes, version: int) -> str:
    """The text of ``_dictionary.py`` holding ``data``, in lines of at most 120 characters."""
    lines, width = [], 100
    for start in range(0, len(data), width):
        lines.append(f"    {data[start:start + width]!r}")
    return _HEADER.format(version=version) + "\n".join(lines) + "\n)\n"


def main() -> None:
    from torchslim.artifact._format import ARTIFACT_VERSION

    target = Path(__file__).with_name("_dictionary.py")
    target.write_text(dictionary_module(manifest_dictionary(), ARTIFACT_VERSION))
    print(f"wrote {target} ({len(manifest_dictionary())} bytes)")


if __name__ == "__main__":
    main()
