"""Hypothesis strategies for malformed (and some valid) recipes, domains, npz files and image folders.

A generated :class:`Case` is a small folder of files plus the command line to run in it. Every case carries an
input class (``Case.kind``) so the fuzzer can count outcomes per class. The documents start from the shipped
recipes and domains (``recipes/``, ``domains/``) and from one valid config per stage type, then get mutated:
wrong types, unknown or misspelt keys, out-of-range and huge numbers, inf/nan, deep nesting, broken YAML,
non-UTF-8 bytes, special paths (directories, fifos, devices, over-long names), broken data files.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
NAME_MAX = 255


# --- what a case is -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dir:
    """A directory where a file is expected."""


@dataclass(frozen=True)
class Fifo:
    """A named pipe: opening it for reading would block."""


@dataclass(frozen=True)
class Link:
    """A symbolic link, e.g. to /dev/zero."""

    target: str


@dataclass(frozen=True)
class Unreadable:
    """A file with mode 000 (readable anyway when the tests run as root)."""

    data: bytes


@dataclass
class Case:
    """Files to create (relative path -> bytes or a special entry) and the CLI arguments to run among them.

    ``names``: file names of which the one-line error must mention at least one.
    """

    kind: str
    command: str  # check | run | eval
    args: list[str]
    files: dict[str, Any] = field(default_factory=dict)
    names: tuple[str, ...] = ()

    def describe(self) -> str:
        shown = {k: (v[:300] if isinstance(v, bytes) else v) for k, v in self.files.items()}
        return f"[{self.kind}] torchslim {' '.join(a[:200] for a in self.args)}\nfiles: {shown!r}"


class Raw:
    """A YAML fragment written verbatim (huge integers, deep nesting), which yaml.safe_dump cannot produce."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}...)"


def dump(doc: Any) -> bytes:
    """YAML text of ``doc`` with every :class:`Raw` fragment spliced in."""
    raws: list[str] = []

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            raws.append(node.text)
            return f"RAWFRAGMENT{len(raws) - 1:05d}X"
        if isinstance(node, dict):
            return {swap(k) if isinstance(k, Raw) else k: swap(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [swap(v) for v in node]
        return node

    text = yaml.safe_dump(swap(doc), sort_keys=False, default_flow_style=None, allow_unicode=True, width=10**9)
    for i, raw in enumerate(raws):
        text = text.replace(f"RAWFRAGMENT{i:05d}X", raw)
    return text.encode()


# --- the documents mutations start from -----------------------------------------------------------------------


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


SHIPPED_DOMAINS = {p.name: _load(p) for p in sorted((ROOT / "domains").glob("*.yaml"))}
SHIPPED_RECIPES = {f"{p.parent.name}/{p.name}": _load(p) for p in sorted((ROOT / "recipes").rglob("*.yaml"))}

TINY_DOMAIN = {"name": "tiny", "task": "image-classification",
               "data": {"source": "digits", "test_fraction": 0.2, "val_fraction": 0.1, "seed": 0},
               "model": {"name": "lenet300_100", "kwargs": {"hidden1": 8, "hidden2": 8}},
               "metric": "accuracy", "constraints": {"max_metric_drop": 0.5}, "runtime": "torch"}

STAGE_CONFIGS: dict[str, dict[str, Any]] = {
    "train": {"train": {"epochs": 1, "lr": 0.01, "batch_size": 32, "weight_decay": 0.0, "optimizer": "adam",
                        "schedule": "cosine", "augment": "shift"}},
    "prune-magnitude": {"prune": {"method": "magnitude", "sparsity": 0.5, "scope": "global",
                                  "schedule": {"kind": "polynomial", "steps": 2},
                                  "finetune": {"epochs": 1, "lr": 0.001, "batch_size": 32, "augment": "none"},
                                  "ignore": ["fc3"], "overrides": {"fc1": 0.3},
                                  "sensitivity": {"sparsities": [0.5, 0.9], "max_drop": 0.05}}},
    "prune-activation": {"prune": {"method": "activation", "threshold": 0.1, "calibration": {"batches": 2},
                                   "finetune": {"epochs": 1, "lr": 0.001}, "ignore": ["re:fc3"]}},
    "prune-structured": {"prune": {"method": "structured", "sparsity": 0.25, "importance": "taylor",
                                   "calibration": {"batches": 2}, "schedule": {"kind": "oneshot", "steps": 1},
                                   "ignore": [], "overrides": {"re:fc[12]": 0.5}}},
    "quantize-weight": {"quantize": {"method": "weight", "bits": 4, "granularity": "group", "group_size": 8,
                                     "symmetric": True, "max_metric_drop": 0.05, "ignore": ["fc3"],
                                     "overrides": {"fc1": 8}}},
    "quantize-kmeans": {"quantize": {"method": "kmeans", "bits": 4, "iterations": 5,
                                     "finetune": {"epochs": 1, "lr": 0.0001}, "overrides": {"fc2": 3}}},
    "quantize-static": {"quantize": {"method": "static", "bits": 8, "granularity": "channel",
                                     "calibration": {"batches": 2, "observer": "percentile", "percentile": 99.9}}},
    "quantize-dynamic": {"quantize": {"method": "dynamic", "bits": 8, "granularity": "tensor", "ignore": []}},
    "quantize-qat": {"quantize": {"method": "qat", "bits": 4, "granularity": "channel", "symmetric": True,
                                  "finetune": {"epochs": 1, "lr": 0.001}, "calibration": {"batches": 2}}},
    "distill": {"distill": {"teacher": "baseline", "student": {"name": "lenet300_100", "kwargs": {"width": 0.3}},
                            "temperature": 4.0, "alpha": 0.9, "epochs": 1, "lr": 0.01, "batch_size": 32,
                            "augment": "none", "features": [{"student": "fc1", "teacher": "fc1", "weight": 0.1}],
                            "regularization": {"kind": "l2", "weight": 0.0001}}},
    "export": {"export": {"formats": ["torchslim", "onnx"]}},
}


def tiny_recipe(*stages: dict[str, Any], domain: Any = "domain.yaml") -> dict[str, Any]:
    return {"domain": domain, "seed": 0, "stages": [copy.deepcopy(s) for s in stages]}


# --- bad values -----------------------------------------------------------------------------------------------


def deep(depth: int, kind: str) -> Raw:
    """A flow-style YAML value nested ``depth`` levels deep."""
    if kind == "list":
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw("{a: " * depth + "1" + "}" * depth)


huge_ints = st.integers(30, 6000).map(lambda n: Raw("9" * n))
huge_ints_signed = st.tuples(st.sampled_from(["", "-"]), st.integers(19, 5000)).map(lambda t: Raw(t[0] + "7" * t[1]))

odd_strings = st.sampled_from([
    "", " ", "\t", "x" * 400, "../../../../etc/passwd", "~nosuchuser_zz/x", "~/x", "é", "名前", "\u202e", "null",
    "1e999", "NaN", "re:(", "re:", "re:a{99999999999}", "re:" + "(" * 200 + "a" + ")" * 200, "a\\b", ":", "::",
    "a:b", "-", "--help", "%s%s%s",
])

bad_scalars = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2, 3, 7, 8, 9, 16, 33, 1000, -(2**31), 2**31, 2**32, 2**63,
                     2**64, 10**30, -(10**30), 0.0, -0.0, 0.5, 1.0, 1.5, -0.5, 1e-320, 1e308, -1e308, 99.99, 100.0,
                     float("inf"), float("-inf"), float("nan")]),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    odd_strings,
    st.text(max_size=12),
    huge_ints,
    huge_ints_signed,
)

bad_containers = st.one_of(
    st.just([]), st.just({}), st.lists(bad_scalars, max_size=4), st.dictionaries(st.text(max_size=6), bad_scalars,
                                                                              max_size=3),
    st.builds(deep, st.sampled_from([5, 40, 200, 1000, 5000]), st.sampled_from(["list", "map"])),
)

bad_values = st.one_of(bad_scalars, bad_scalars, bad_containers)


def misspell(key: str, how: int) -> Any:
    if not isinstance(key, str) or not key:
        return "x"
    if how == 0:
        return key.upper()
    if how == 1:
        return key[:-1]
    if how == 2:
        return key + "s"
    if how == 3 and len(key) > 1:
        return key[1] + key[0] + key[2:]
    if how == 4:
        return key.replace("_", "-") if "_" in key else key + "_"
    return {5: 1, 6: None, 7: True}.get(how, key + " ")


# --- tree mutations -------------------------------------------------------------------------------------------


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a node of a plain YAML tree (the root is ``()``)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


@st.composite
def mutate(draw, doc: Any, rounds: tuple[int, int] = (1, 3)) -> Any:
    """``doc`` with 1-3 random edits: bad value, deleted key, unknown/misspelt key, wrapped in a list, ..."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(*rounds))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["value", "value", "value", "delete", "unknown", "misspell", "wrap", "unwrap",
                                   "swap_type", "empty"]))
        if not path:  # the root
            if op in ("value", "wrap", "swap_type"):
                doc = copy.deepcopy(draw(st.one_of(bad_values, st.just([doc]))))
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        value = parent[key]
        if op == "value":  # a copy: later rounds may edit it, and the strategy's own value must stay as it is
            parent[key] = copy.deepcopy(draw(bad_values))
        elif op == "delete":
            del parent[key]
        elif op == "unknown" and isinstance(value, dict):
            value[draw(st.sampled_from(["extra", "lr_", "Epochs", "kwargs", "unknown_key", "seed", "method"]))] = \
                copy.deepcopy(draw(bad_values))
        elif op == "misspell" and isinstance(parent, dict):
            new = misspell(key, draw(st.integers(0, 8)))
            parent.pop(key)
            parent[new] = value
        elif op == "wrap":
            parent[key] = [value]
        elif op == "unwrap" and isinstance(value, list) and value:
            parent[key] = value[0]
        elif op == "swap_type":
            parent[key] = [list(kv) for kv in value.items()] if isinstance(value, dict) else (
                {str(i): v for i, v in enumerate(value)} if isinstance(value, list) else str(value))
        elif op == "empty":
            parent[key] = type(value)() if isinstance(value, (dict, list, str)) else None
    return doc


YAML_BREAKERS = [
    b"key: [unclosed", b"a: {b: 1", b"\t- tab: indent", b"a: b: c", b"- [1, 2\n- 3", b"a: *undefined",
    b"a: &x 1\nb: &x 2\nc: *y", b"!!python/object:os.system {}", b"a: !!binary '@@@'", b"---\na: 1\n---\nb: 2",
    b"a: 1\na: 2", b"? [1, 2]\n: 3", b"a: !!float nope", b"a: !!int nope", b"%YAML 9.9\n---\na: 1",
    b"a: |\n bad\n  indent\n x", b"\"unterminated", b"a: 'x\n\nb: 2", b"@reserved", b"`backtick",
    b"a: &a [*a]", b"a: &a {b: *a}",
    b"a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    b"g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n",
]


@st.composite
def byte_mutation(draw, data: bytes) -> tuple[str, bytes]:
    """Damage serialized YAML at the byte level; returns (input class, bytes)."""
    op = draw(st.sampled_from(["non-utf8", "non-utf8", "truncate", "syntax", "syntax", "empty", "nul", "utf16",
                               "deep-block", "control", "bom"]))
    pos = draw(st.integers(0, len(data)))
    if op == "non-utf8":
        junk = draw(st.sampled_from([b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x82", b"\x80" * 3,
                                     b"\xed\xa0\x80"]))
        return "non-utf8", data[:pos] + junk + data[pos:]
    if op == "truncate":
        return "yaml-syntax", data[:pos]
    if op == "syntax":
        return "yaml-syntax", data[:pos] + b"\n" + draw(st.sampled_from(YAML_BREAKERS)) + b"\n" + data[pos:]
    if op == "empty":
        return "empty-file", draw(st.sampled_from([b"", b"\n", b"   \n", b"# only a comment\n", b"~", b"---",
                                                   b"[]", b"42", b"just a string"]))
    if op == "nul":
        return "non-utf8", data[:pos] + b"\x00" + data[pos:]
    if op == "utf16":
        return "non-utf8", data.decode().encode("utf-16")
    if op == "deep-block":
        depth = draw(st.sampled_from([50, 300, 2000]))
        text = "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "v\n"
        return "deep-nesting", text.encode()
    if op == "bom":
        return "yaml-syntax", b"\xef\xbb\xbf" + data
    return "yaml-syntax", data[:pos] + bytes([draw(st.integers(1, 31))]) + data[pos:]


# --- data files -----------------------------------------------------------------------------------------------


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@st.composite
def npz_file(draw) -> tuple[str, bytes]:
    """An npz with arrays x, y (and maybe x_test, y_test), some of them wrong; returns (what is odd, bytes)."""
    n = draw(st.sampled_from([0, 1, 2, 3, 5, 12, 40, 80]))
    classes = draw(st.sampled_from([1, 2, 3, 10, 30]))
    shape = draw(st.sampled_from([(1, 8, 8), (8, 8), (64,), (), (1, 8, 9), (3, 8, 8), (1, 1, 8, 8)]))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    x = rng.random((n, *shape), dtype=np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    arrays: dict[str, np.ndarray] = {"x": x, "y": y}
    what = draw(st.sampled_from(["valid", "x-dtype", "y-dtype", "y-shape", "y-length", "labels", "nonfinite",
                                 "test-shape", "test-only-x", "missing", "extra", "corrupt", "empty-arrays",
                                 "test-split"]))
    if what == "x-dtype":
        arrays["x"] = draw(st.sampled_from([
            np.array([["a"] * 64] * max(n, 1)), np.array([b"x"] * max(n, 1)), np.array([1 + 2j] * max(n, 1)),
            np.array([None] * max(n, 1), dtype=object), np.array([[1, "2"]] * max(n, 1), dtype=object),
            (x > 0.5), x.astype(np.float16), x.astype(np.int8), np.zeros((max(n, 1),), dtype=[("a", "f4")])]))
    elif what == "y-dtype":
        arrays["y"] = draw(st.sampled_from([
            y.astype(np.float32) + 0.5, y.astype(str), np.array([None] * n, dtype=object), y.astype(np.uint8),
            np.full(n, np.nan), y.astype(np.float64), np.full(n, True), (y + 1j), y.astype(np.int8) - 100]))
    elif what == "y-shape":
        arrays["y"] = draw(st.sampled_from([y[:, None], np.array(3), y.reshape(-1, 1, 1), np.stack([y, y], 1)]))
    elif what == "y-length":
        arrays["y"] = np.concatenate([y, y[:1], [0]])
    elif what == "labels":
        arrays["y"] = y + draw(st.sampled_from([-5, 10**6, 10**12, 2**62, -(2**63)]))
    elif what == "nonfinite":
        if x.size:
            x.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif what in ("test-shape", "test-split"):
        m = draw(st.sampled_from([0, 1, 4]))
        tshape = shape if what == "test-split" else draw(st.sampled_from([(1, 8, 8), (2, 8, 8), (64,), (1, 4, 4)]))
        arrays["x_test"] = rng.random((m, *tshape), dtype=np.float32)
        arrays["y_test"] = rng.integers(0, classes, m)
    elif what == "test-only-x":
        arrays["x_test"] = x
    elif what == "missing":
        arrays.pop(draw(st.sampled_from(["x", "y"])))
    elif what == "extra":
        arrays["labels"] = np.array(["a", "b"])
    elif what == "empty-arrays":
        arrays = {"x": np.zeros((0, 1, 8, 8), np.float32), "y": np.zeros((0,), np.int64)}
    data = _npz_bytes(arrays)
    if what == "corrupt":
        cut = draw(st.integers(0, len(data)))
        data = draw(st.sampled_from([data[:cut], data[:cut] + b"\x00" * 7 + data[cut + 7:], b"PK\x03\x04junk",
                                     b"not an npz", b""]))
    return what, data


def _png(size: tuple[int, int], mode: str, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (Pillow refuses it as a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + \
        chunk(b"IEND", b"")


@st.composite
def image_folder(draw, root: str) -> tuple[str, dict[str, Any]]:
    """Files of an image folder ``root/<class>/<image>``, some broken; returns (what is odd, files)."""
    files: dict[str, Any] = {}
    n_classes = draw(st.sampled_from([0, 1, 2, 3]))
    per_class = draw(st.sampled_from([0, 1, 2, 3]))
    seed = draw(st.integers(0, 100))
    for c in range(n_classes):
        for i in range(per_class):
            mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA", "I;16"]))
            files[f"{root}/c{c}/img{i}.png"] = _png(draw(st.sampled_from([(8, 8), (1, 1), (3, 50)])), mode,
                                                   seed + i)
    what = draw(st.sampled_from(["valid", "corrupt", "truncated", "empty-image", "dir-image", "fifo-image",
                                 "bomb", "text", "unreadable", "class-file", "missing-root"]))
    bad = f"{root}/c0/bad.png"
    if what == "corrupt":
        files[bad] = b"\x89PNG\r\n\x1a\n" + bytes(draw(st.binary(min_size=0, max_size=64)))
    elif what == "truncated":
        data = _png((8, 8), "RGB", seed)
        files[bad] = data[: draw(st.integers(0, len(data) - 1))]
    elif what == "empty-image":
        files[f"{root}/c0/empty.jpg"] = b""
    elif what == "dir-image":
        files[bad] = Dir()
    elif what == "fifo-image":
        files[bad] = Fifo()
    elif what == "bomb":
        files[bad] = _bomb_png()
    elif what == "text":
        files[f"{root}/c0/notes.txt"] = b"not an image"
        files[f"{root}/c0/fake.jpg"] = b"GIF89a not really"
    elif what == "unreadable":
        files[bad] = Unreadable(_png((8, 8), "L", seed))
    elif what == "class-file":
        files[f"{root}/notaclass.png"] = _png((8, 8), "L", seed)
    elif what == "missing-root":
        files = {}
    if what not in ("missing-root",) and not files:
        files[f"{root}/.keep"] = b""
    return what, files


# --- cases ----------------------------------------------------------------------------------------------------

LONG_NAME = "n" * (NAME_MAX + 45) + ".yaml"
LONG_PATH = "/".join(["d" * 200] * 25) + "/x.yaml"


def _special(draw, name: str) -> tuple[str, Any]:
    """A special entry standing where the file ``name`` should be; returns (name used, entry or None)."""
    what = draw(st.sampled_from(["dir", "fifo", "dev-zero", "unreadable", "long-name", "long-path", "missing",
                                 "dev-null", "dangling"]))
    if what == "dir":
        return name, Dir()
    if what == "fifo":
        return name, Fifo()
    if what == "dev-zero":
        return name, Link("/dev/zero")
    if what == "dev-null":
        return name, Link("/dev/null")
    if what == "dangling":
        return name, Link("/nonexistent/target.yaml")
    if what == "unreadable":
        return name, Unreadable(b"name: x\n")
    if what == "long-name":
        return LONG_NAME, None
    if what == "long-path":
        return LONG_PATH, None
    return "absent.yaml", None


def _recipe_case(kind: str, recipe: Any, domain: Any = None, *, raw_recipe: bytes | None = None,
                 raw_domain: bytes | None = None, command: str = "check", extra: dict[str, Any] | None = None,
                 overrides: tuple[str, ...] = ()) -> Case:
    files: dict[str, Any] = {"recipe.yaml": raw_recipe if raw_recipe is not None else dump(recipe)}
    if domain is not None or raw_domain is not None:
        files["domain.yaml"] = raw_domain if raw_domain is not None else dump(domain)
    files.update(extra or {})
    args = [command, "recipe.yaml"]
    if command == "run":
        args += ["--out", "out"]
    for o in overrides:
        args += ["--set", o]
    names = ("recipe.yaml", "domain.yaml")
    if isinstance(recipe, dict) and isinstance(recipe.get("domain"), str) and recipe["domain"]:
        names += (recipe["domain"][-40:],)  # a missing or special domain file is named itself
    return Case(kind, command, args, files, names)


@st.composite
def shipped_mutation(draw) -> Case:
    """A shipped recipe (its domain copied beside it) with its recipe or domain mutated as a tree."""
    name = draw(st.sampled_from(sorted(SHIPPED_RECIPES)))
    recipe = copy.deepcopy(SHIPPED_RECIPES[name])
    domain = None
    if isinstance(recipe["domain"], str):
        domain = copy.deepcopy(SHIPPED_DOMAINS[Path(recipe["domain"]).name])
        recipe["domain"] = "domain.yaml"
    target = draw(st.sampled_from(["recipe", "domain"] if domain is not None else ["recipe"]))
    if target == "recipe":
        recipe = draw(mutate(recipe))
    else:
        domain = draw(mutate(domain))
    return _recipe_case(f"shipped-{target}", recipe, domain)


@st.composite
def stage_case(draw) -> Case:
    """One stage config of every type on the tiny domain, mutated."""
    kind = draw(st.sampled_from(sorted(STAGE_CONFIGS)))
    stage = copy.deepcopy(STAGE_CONFIGS[kind])
    if draw(st.integers(0, 9)) > 0:
        stage = draw(mutate(stage))
    stages = [STAGE_CONFIGS["train"], stage] if kind != "train" else [stage]
    return _recipe_case(f"stage-{kind}", tiny_recipe(*stages), TINY_DOMAIN)


@st.composite
def bytes_case(draw) -> Case:
    """A valid recipe or domain damaged at the byte level (non-UTF-8, truncated, YAML syntax, deep nesting)."""
    stage = STAGE_CONFIGS[draw(st.sampled_from(sorted(STAGE_CONFIGS)))]
    recipe, domain = tiny_recipe(STAGE_CONFIGS["train"], stage), TINY_DOMAIN
    which = draw(st.sampled_from(["recipe", "domain"]))
    kind, data = draw(byte_mutation(dump(recipe if which == "recipe" else domain)))
    if which == "recipe":
        return _recipe_case(kind, None, domain, raw_recipe=data)
    return _recipe_case(kind, recipe, None, raw_domain=data)


@st.composite
def value_case(draw) -> Case:
    """Huge integers, inf/nan and deep nesting put where numbers or mappings belong."""
    recipe, domain = tiny_recipe(STAGE_CONFIGS["train"]), copy.deepcopy(TINY_DOMAIN)
    where = draw(st.sampled_from(["seed", "data.seed", "data.test_fraction", "data.val_fraction", "train.epochs",
                                  "train.lr", "train.batch_size", "constraints.max_size_bytes",
                                  "constraints.max_latency_ms.batch_1", "constraints.min_metric", "stages",
                                  "domain", "model.kwargs", "name"]))
    value = draw(st.one_of(huge_ints, huge_ints_signed, bad_containers,
                           st.sampled_from([float("inf"), float("-inf"), float("nan"), -1, 2**32, 2**64,
                                            -(2**63), 1e308, 0])))
    kind = ("huge-int" if isinstance(value, Raw) and value.text.lstrip("-").isdigit()
            else "deep-nesting" if isinstance(value, Raw)
            else "nonfinite" if isinstance(value, float) else "bad-value")
    section, _, key = where.partition(".")
    if where == "seed":
        recipe["seed"] = value
    elif section == "train":
        recipe["stages"][0]["train"][key] = value
    elif where in ("stages", "domain"):
        recipe[where] = value
    elif section == "data":
        domain["data"][key] = value
    elif section == "constraints":
        c = domain["constraints"] = {}
        if key.startswith("max_latency_ms"):
            c["max_latency_ms"] = {"batch_1": value}
        else:
            c[key] = value
    elif where == "model.kwargs":
        domain["model"]["kwargs"] = {draw(st.sampled_from(["hidden1", "num_classes", "width"])): value}
    else:
        domain["name"] = value
    return _recipe_case(kind, recipe, domain)


MODEL_KWARG_VALUES = [-1, 0, 1, -1000, 10**6, 10**9, 2**31, 2**63, 10**30, 1.5, 0.0, -0.5, 1e3, 1e6, 1e12, 1e300,
                      float("inf"), float("-inf"), float("nan"), "8", None, True, [8], {"a": 1}]


@st.composite
def model_case(draw) -> Case:
    """Built-in models with absurd kwargs: negative, huge (terabytes of weights), inf/nan, wrong types."""
    name = draw(st.sampled_from(["lenet300_100", "lenet5", "mnist1d_cnn", "mnist1d_mlp", "resnet", "LeNet5", ""]))
    keys = {"lenet300_100": ["hidden1", "hidden2", "num_classes", "width"],
            "lenet5": ["conv1", "conv2", "fc", "num_classes", "width"],
            "mnist1d_cnn": ["channels", "num_classes", "width"],
            "mnist1d_mlp": ["hidden", "num_classes", "width"]}.get(name, ["width", "num_classes"])
    kwargs = {k: draw(st.sampled_from(MODEL_KWARG_VALUES)) for k in
              draw(st.lists(st.sampled_from(keys + ["bogus"]), min_size=1, max_size=3, unique=True))}
    domain = copy.deepcopy(TINY_DOMAIN)
    domain["model"] = {"name": name, "kwargs": kwargs}
    if name.startswith("mnist1d"):
        domain["data"]["source"] = "mnist1d"
        domain["task"] = "sequence-classification"
    stages = [STAGE_CONFIGS["train"]]
    if draw(st.booleans()):  # the student of a distill stage is built the same way
        student = {"name": name, "kwargs": kwargs}
        domain["model"] = copy.deepcopy(TINY_DOMAIN["model"])
        domain["data"]["source"] = "digits"
        stages.append({"distill": {"student": student, "epochs": 1}})
    return _recipe_case("model-kwargs", tiny_recipe(*stages), domain)


FACTORY_MODULE = {
    "ok": "import torch\ndef build(hidden=8, **kw):\n    return torch.nn.Sequential(torch.nn.Flatten(), "
          "torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))\n",
    "syntax": "def build(:\n",
    "import-raises": "raise RuntimeError('boom at import')\n",
    "call-raises": "def build(**kw):\n    return 1 / 0\n",
    "not-module": "def build(**kw):\n    return 'a string'\n",
    "not-callable": "build = 3\n",
    "huge": "import torch\ndef build(**kw):\n    return torch.nn.Linear(100000, 100000000)\n",
    "recursion": "def build(**kw):\n    return build(**kw)\n",
    "exit": "def build(**kw):\n    raise SystemExit(5)\n",
    "input-shape": "import torch\nclass M(torch.nn.Linear):\n    input_shape = 'abc'\n"
                   "def build(**kw):\n    return M(64, 10)\n",
}


@st.composite
def factory_case(draw) -> Case:
    """``model.factory``: malformed module:function syntax (relative names, empty parts) and misbehaving modules."""
    domain = copy.deepcopy(TINY_DOMAIN)
    files: dict[str, Any] = {}
    syntax = draw(st.sampled_from([
        ".foo:bar", "..x:y", "a..b:c", ":build", "mod:", "mod", "mod:build:extra", "mod.:build", ".:build", "..:b",
        " mod:build", "mod:build ", "1mod:build", "mod-x:build", "mod:1build", "mod:bu ild", "os.path:join",
        "nosuch_module_zz:build", "json:dumps", "a.b.c.d:e", "", ":", "mod\n:build", "é:build", "mod:é",
        "FACTORY"]))
    if syntax == "FACTORY":
        what = draw(st.sampled_from(sorted(FACTORY_MODULE)))
        module = f"fac_{what.replace('-', '_')}_{draw(st.integers(0, 10**6))}"
        files[f"{module}.py"] = FACTORY_MODULE[what].encode()
        syntax = f"{module}:build"
    domain["model"] = {"factory": syntax, "kwargs": draw(st.sampled_from([{}, {"hidden": 4}, {"hidden": -3},
                                                                         {"hidden": 10**12}, {"nope": 1}]))}
    if draw(st.booleans()):
        domain["model"]["weights"] = draw(st.sampled_from(["w.safetensors", "absent.safetensors", ""]))
        files["w.safetensors"] = draw(st.sampled_from([b"", b"garbage", Dir(), Fifo(), Link("/dev/zero")]))
    return _recipe_case("factory", tiny_recipe(STAGE_CONFIGS["train"]), domain, extra=files)


@st.composite
def special_path_case(draw) -> Case:
    """Special files or names where the recipe, the domain, the data or the weights should be."""
    role = draw(st.sampled_from(["recipe", "domain", "npz", "imagefolder", "weights", "teacher", "out"]))
    if role == "out":  # run's output folder where no folder can be made
        out = draw(st.sampled_from(["/dev/null", "recipe.yaml/out", "n" * 300, "/proc/version/out"]))
        files = {"recipe.yaml": dump(tiny_recipe(STAGE_CONFIGS["train"])), "domain.yaml": dump(TINY_DOMAIN)}
        return Case("special-path", "run", ["run", "recipe.yaml", "--out", out], files, (out[-40:],))
    recipe, domain = tiny_recipe(STAGE_CONFIGS["train"]), copy.deepcopy(TINY_DOMAIN)
    name, entry = _special(draw, {"recipe": "recipe.yaml", "domain": "domain.yaml", "npz": "data.npz",
                                  "imagefolder": "images", "weights": "w.safetensors",
                                  "teacher": "teacher"}[role])
    extra: dict[str, Any] = {}
    if role == "recipe":
        files: dict[str, Any] = {"domain.yaml": dump(domain)}
        if entry is not None:
            files[name] = entry
        return Case("special-path", "check", ["check", name], files, (name[-40:],))
    if role == "domain":
        recipe["domain"] = name
        if entry is not None:
            extra[name] = entry
        return _recipe_case("special-path", recipe, None, extra=extra)
    if role == "npz":
        domain["data"]["source"] = f"npz:{name}"
    elif role == "imagefolder":
        domain["data"]["source"] = f"imagefolder:{name}"
    elif role == "weights":
        domain["model"]["weights"] = name
    else:
        recipe["stages"].append({"distill": {"teacher": name, "epochs": 1}})
    if entry is not None:
        extra[name] = entry
    return _recipe_case("special-path", recipe, domain, extra=extra)


@st.composite
def npz_case(draw) -> Case:
    what, data = draw(npz_file())
    domain = copy.deepcopy(TINY_DOMAIN)
    domain["data"]["source"] = "npz:data.npz"
    domain["data"]["test_fraction"] = draw(st.sampled_from([0.2, 0.01, 0.5]))
    domain["data"]["val_fraction"] = draw(st.sampled_from([0.1, 0.01, 0.3]))
    return _recipe_case(f"npz-{what}", tiny_recipe(STAGE_CONFIGS["train"]), domain, extra={"data.npz": data})


@st.composite
def imagefolder_case(draw) -> Case:
    what, files = draw(image_folder("images"))
    domain = copy.deepcopy(TINY_DOMAIN)
    domain["data"]["source"] = "imagefolder:images"
    domain["model"] = draw(st.sampled_from([{"name": "lenet5", "kwargs": {"width": 0.25}},
                                            TINY_DOMAIN["model"], {"name": "mnist1d_mlp"}]))
    domain["data"]["test_fraction"] = draw(st.sampled_from([0.2, 0.5]))
    return _recipe_case(f"imagefolder-{what}", tiny_recipe(STAGE_CONFIGS["train"]), domain, extra=files)


@st.composite
def split_case(draw) -> Case:
    """Fractions that leave fewer test or validation samples than classes."""
    domain = copy.deepcopy(TINY_DOMAIN)
    domain["data"]["source"] = draw(st.sampled_from(["digits", "mnist1d"]))
    if domain["data"]["source"] == "mnist1d":
        domain["model"] = {"name": "mnist1d_mlp", "kwargs": {"hidden": 8}}
        domain["task"] = "sequence-classification"
    domain["data"]["test_fraction"] = draw(st.sampled_from([0.001, 0.002, 0.004, 0.2, 1e-9, 0.0001]))
    domain["data"]["val_fraction"] = draw(st.sampled_from([0.001, 0.002, 0.0025, 0.1, 1e-12]))
    return _recipe_case("split-size", tiny_recipe(STAGE_CONFIGS["train"]), domain)


@st.composite
def override_case(draw) -> Case:
    """``--set`` values: huge integers, deep nesting, YAML errors, wrong paths."""
    key = draw(st.sampled_from(["stages.0.train.epochs", "seed", "stages.0.train", "stages", "stages.9.x",
                                "domain", "stages.0.train.lr", "a.b.c", "stages.x", "seed.x", ""]))
    value = draw(st.sampled_from(["9" * 5000, "9" * 100, "[" * 3000, "[" * 100 + "]" * 100, "{a: [", ".inf",
                                  ".nan", "-1", "null", "", "*x", "!!python/object:os.system {}", "[1, 2]",
                                  "{epochs: 1}", "'x'", "\ttab"]))
    sep = draw(st.sampled_from(["=", "=", ""]))
    return _recipe_case("override", tiny_recipe(STAGE_CONFIGS["train"]), TINY_DOMAIN,
                        overrides=(f"{key}{sep}{value}",))


@st.composite
def run_case(draw) -> Case:
    """``run`` on a tiny recipe (one epoch) with a stage of any type: mostly broken (nothing may be written),
    now and then valid, or with values ``check`` accepts that only running exercises."""
    stage = STAGE_CONFIGS[draw(st.sampled_from(sorted(STAGE_CONFIGS)))]
    recipe, domain = tiny_recipe(STAGE_CONFIGS["train"], stage), copy.deepcopy(TINY_DOMAIN)
    how = draw(st.sampled_from(["recipe", "recipe", "domain", "valid"]))
    if how == "recipe":
        recipe["stages"][1] = draw(mutate(recipe["stages"][1]))
    elif how == "domain":
        domain = draw(mutate(domain))
    return _recipe_case("run", recipe, domain, command="run")


@st.composite
def eval_data_case(draw) -> Case:
    """``eval`` of the saved artifact on a domain whose data is a (maybe broken) npz file or image folder."""
    domain = copy.deepcopy(TINY_DOMAIN)
    if draw(st.booleans()):
        _, data = draw(npz_file())
        files: dict[str, Any] = {"data.npz": data}
        domain["data"]["source"] = "npz:data.npz"
    else:
        _, files = draw(image_folder("images"))
        domain["data"]["source"] = "imagefolder:images"
    files["domain.yaml"] = dump(domain)
    return Case("eval-data", "eval", ["eval", "ARTIFACT", "--domain", "domain.yaml"], files, ("domain.yaml",))


@st.composite
def eval_case(draw) -> Case:
    """``eval`` of a saved artifact (made once per session) against a mutated or damaged domain file."""
    domain = copy.deepcopy(TINY_DOMAIN)
    if draw(st.booleans()):
        data = dump(draw(mutate(domain)))
    else:
        _, data = draw(byte_mutation(dump(domain)))
    return Case("eval", "eval", ["eval", "ARTIFACT", "--domain", "domain.yaml"], {"domain.yaml": data},
                ("domain.yaml",))


@st.composite
def valid_case(draw) -> Case:
    """Unmodified shipped recipes, and the tiny recipe with every stage type: must pass ``check``."""
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(SHIPPED_RECIPES)))
        recipe, domain = copy.deepcopy(SHIPPED_RECIPES[name]), None
        if isinstance(recipe["domain"], str):
            domain = SHIPPED_DOMAINS[Path(recipe["domain"]).name]
            recipe["domain"] = "domain.yaml"
        return _recipe_case("valid", recipe, domain)
    stages = [STAGE_CONFIGS[k] for k in draw(st.lists(st.sampled_from(sorted(STAGE_CONFIGS)), max_size=3))]
    return _recipe_case("valid", tiny_recipe(STAGE_CONFIGS["train"], *stages), TINY_DOMAIN)


def cases() -> st.SearchStrategy[Case]:
    """Every input class, weighted towards the cheap ``check`` cases."""
    return st.one_of(
        shipped_mutation(), shipped_mutation(), stage_case(), stage_case(), stage_case(), bytes_case(),
        bytes_case(), value_case(), model_case(), factory_case(), special_path_case(), npz_case(), npz_case(),
        imagefolder_case(), split_case(), override_case(), valid_case(), run_case(), eval_case(), eval_data_case(),
    )


