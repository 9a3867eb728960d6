"""User-facing errors: one line that names the file and the field."""

from __future__ import annotations

import re
from typing import Any

# The line ``error: <file>: <field>: <message>`` stays within MAX_LINE characters: each part is shortened, the
# file from its front (its name is at the end), the field and message from their end.
MAX_LINE = 300
_MAX_SOURCE, _MAX_FIELD = 100, 80


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _clip(text: str, limit: int, *, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1):] if keep_end else text[: limit - 1] + "…"


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened for an error message (a value may be a 4,000-digit integer or a long list);
    true, false and null as YAML spells them."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return f"<integer of about {int(value.bit_length() * 0.30103)} digits>"
    return _clip(_one_line(text), limit)


def by_reason(what: str, reasons: dict[str, str], shown: int = 8) -> list[str]:
    """One line per distinct reason naming its layers (``what (why): a, b and 3 more``), for stage logs that
    say which layers a method left alone and why."""
    lines = []
    for why in sorted(set(reasons.values())):
        names = [n for n, w in reasons.items() if w == why]
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        lines.append(f"{what} ({why}): {', '.join(names[:shown])}{more}")
    return lines


def did_you_mean(value: Any, known: Any, cutoff: float = 0.75) -> str:
    """``"did you mean 'static'? "`` when ``value`` is a near miss of one of ``known`` (of two: both, the closer
    first), else ``""``: the start of an unknown-name message, before the list of known names."""
    import difflib

    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(k) for k in known], n=2, cutoff=cutoff)  # batch_32: _1 or _64
    return f"did you mean {' or '.join(map(repr, close))}? " if close else ""


class TorchslimWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as one ``warning:`` line)."""


class ConfigError(ValueError):
    """Bad user input. ``str(err)`` is the one line the CLI prints (exit code 2).

    Args:
        field: dotted path of the offending key, e.g. ``stages[0].prune.sparsity``.
        message: what is wrong, phrased as what is expected.
        source: file that holds the field (recipe or domain path), when known.
    """

    def __init__(self, field: Any, message: str, source: str | None = None):
        self.field = "" if field is None else str(field)  # a YAML key may be a number
        self.message, self.source = str(message), None if source is None else str(source)
        super().__init__(self._render())

    def _render(self) -> str:
        source = _clip(_one_line(self.source), _MAX_SOURCE, keep_end=True) if self.source else ""
        field = _clip(_one_line(self.field), _MAX_FIELD)
        where = ": ".join(p for p in (source, field) if p)
        # "error: " + where + ": " + message fits in MAX_LINE
        message = _clip(_one_line(self.message), MAX_LINE - len("error: ") - len(where) - 2)
        return f"{where}: {message}" if where else message

    def within(self, prefix: str = "", source: str | None = None) -> "ConfigError":
        """The same error, its field nested under ``prefix`` and attributed to ``source``."""
        field = ".".join(p for p in (prefix, self.field) if p).replace(".[", "[")
        return ConfigError(field, self.message, source or self.source)
