"""Reading YAML from files and ``--set`` values: every failure is one ConfigError line naming the file.

What can go wrong before a key is even looked at: the path is no regular readable file (a directory, a device,
a pipe, a name too long), the bytes are not UTF-8, the YAML is malformed (reported with its line and column),
an integer is too long for Python to parse, or the document nests or (through aliases) expands beyond reason.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from torchslim._errors import ConfigError

MAX_FILE_BYTES = 10 * 2**20  # recipes and domains are a few hundred bytes
MAX_DEPTH = 64  # nesting of mappings and lists; recipes use 4
MAX_INT_CHARS = 1000  # Python refuses to parse decimal integers of more than 4,300 digits
MAX_NODES = 100_000  # values, counting each alias expansion (a "billion laughs" file is refused)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose scalar conversions fail as YAML errors with a line and column (not a ValueError).

    Unquoted dates stay strings (as in YAML 1.2): no config value is a date, and a date object would not survive
    the JSON of an artifact's manifest.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # YAML forbids a key twice in one mapping; PyYAML keeps the last silently, so a repeated ``seed:`` or
        # ``stages:`` would override what the reader sees first. Merge keys (``<<: *base``) may repeat keys.
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r:.40} appears twice in one mapping (first at line "
                                f"{seen[key].start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int" \
                and len(node.value) > MAX_INT_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value):,} digits is too large (at most {MAX_INT_CHARS:,})",
                node.start_mark)
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # e.g. a date such as 2024-13-45
            raise yaml.constructor.ConstructorError(None, None, f"cannot read {node.value!r:.40}: {exc}",
                                                    node.start_mark) from None


def _position(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"line {line}, column {column}"


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """One line: where (line, column) and what."""
    if isinstance(exc, yaml.reader.ReaderError):
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return f"character {char!r} at {_position(text, exc.position)} is not allowed in YAML"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    return f"invalid YAML{where}: {problem}"


def _check_shape(data: Any) -> str | None:
    """Why ``data`` is too deep, too large or cyclic, or None. Shared subtrees (aliases) count once per use."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    on_path: set[int] = set()

    def visit(node: Any, depth: int) -> str | None:
        if not isinstance(node, (dict, list)):
            return None
        if depth > MAX_DEPTH:
            return f"nests deeper than {MAX_DEPTH} levels"
        key = id(node)
        if key in on_path:
            return "an alias refers to a mapping or list that contains it"
        if key in sizes and depths[key] >= depth:
            return None  # seen at this depth or deeper: its size is known
        on_path.add(key)
        total = 1
        for child in (node.values() if isinstance(node, dict) else node):
            problem = visit(child, depth + 1)
            if problem:
                return problem
            total += sizes.get(id(child), 1)
            if total > MAX_NODES:
                return f"holds more than {MAX_NODES:,} values (counting alias expansions)"
        on_path.discard(key)
        sizes[key], depths[key] = total, depth
        return None

    try:
        return visit(data, 1)
    except RecursionError:
        return f"nests deeper than {MAX_DEPTH} levels"


def parse_yaml(text: str, source: str | None, field: str = "") -> Any:
    """Parse YAML text; a syntax error, an absurd integer or a document too deep or large is a ConfigError."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(field, _yaml_problem(exc, text), source) from None
    except RecursionError:
        raise ConfigError(field, f"invalid YAML: nests deeper than {MAX_DEPTH} levels", source) from None
    problem = _check_shape(data)
    if problem:
        raise ConfigError(field, f"the YAML {problem}", source)
    return data


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    return "is not a regular file"


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file that can be opened (``file not found``, ``is a directory, ...``), or None."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "file not found"
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        return f"cannot read the file: {os_reason(exc)}"
    if not stat.S_ISREG(info.st_mode):
        return _describe(info.st_mode)
    return None


def read_file_bytes(path: str | Path, field: str = "", *, source: str | None = None,
                    limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else is a ConfigError naming it.

    Args:
        path: the file.
        field: the key that named the file, if any (e.g. ``domain``).
        source: the file to name in the error (default: ``path`` itself).
    """
    source = str(path) if source is None else source
    problem = file_problem(path)
    if problem:
        raise ConfigError(field, problem, source)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ConfigError(field, f"cannot read the file: {os_reason(exc)}", source) from None
    if len(data) > limit:
        raise ConfigError(field, f"the file has more than {limit:,} bytes", source)
    return data


def os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno) if exc.errno != errno.ENAMETOOLONG else "the path or a name in it is too long"
    return str(exc)


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; a missing or special file, non-UTF-8 bytes or a syntax error is a ConfigError."""
    source = str(path)
    data = read_file_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", errors="replace")
        raise ConfigError("", f"not UTF-8 text: byte 0x{data[exc.start]:02x} at "
                              f"{_position(before + ' ', len(before))}", source) from None
    return parse_yaml(text, source)
