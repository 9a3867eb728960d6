"""User-facing errors: one line that names the file and the field."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input. ``str(err)`` is the one line the CLI prints (exit code 2).

    Args:
        field: dotted path of the offending key, e.g. ``stages[0].prune.sparsity``.
        message: what is wrong, phrased as what is expected.
        source: file that holds the field (recipe or domain path), when known.
    """

    def __init__(self, field: str, message: str, source: str | None = None):
        self.field, self.message, self.source = field, message, source
        super().__init__(self._render())

    def _render(self) -> str:
        where = ": ".join(p for p in (self.source, self.field) if p)
        return f"{where}: {self.message}" if where else self.message

    def within(self, prefix: str = "", source: str | None = None) -> "ConfigError":
        """The same error, its field nested under ``prefix`` and attributed to ``source``."""
        field = ".".join(p for p in (prefix, self.field) if p).replace(".[", "[")
        return ConfigError(field, self.message, source or self.source)
