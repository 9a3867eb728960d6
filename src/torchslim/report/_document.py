"""A report as a list of blocks, written out as terminal-readable Markdown or as one self-contained HTML page.

Both outputs come from the same blocks, so they cannot disagree. Inline text uses two Markdown marks only:
``code`` and **bold**; the HTML writer escapes everything else.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Items:
    """A bulleted list."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """``header`` and ``rows`` of cell text; the columns listed in ``right`` are right-aligned (numbers)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Figure:
    """A PNG image; only the HTML page shows it (Markdown stays readable in a terminal)."""

    png: bytes
    caption: str


Block = Union[Heading, Paragraph, Items, Table, Figure]


def _markdown_table(t: Table) -> list[str]:
    # columns padded to a common width so the table also reads as a table in a terminal
    widths = [max(len(t.header[i]), *(len(r[i]) for r in t.rows)) if t.rows else len(t.header[i])
              for i in range(len(t.header))]

    def line(cells: tuple[str, ...]) -> str:
        padded = [c.rjust(w) if i in t.right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i in t.right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return [line(t.header), rule, *(line(r) for r in t.rows)]


def to_markdown(blocks: list[Block]) -> str:
    """The blocks as Markdown; figures are left out."""
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Paragraph):
            lines += [b.text, ""]
        elif isinstance(b, Items):
            lines += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            lines += _markdown_table(b) + [""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:0.5em 0}th,td{border:1px solid #ccc;padding:0.2em 0.6em}"
          "th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}"
          "figure{margin:1em 0}figcaption{color:#555;font-size:0.9em}img{max-width:100%}")


def to_html(title: str, blocks: list[Block]) -> str:
    """The blocks as one HTML page with figures embedded as base64 PNG data URIs (no other file is needed)."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Items):
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f'<td class="n">{_inline(c)}</td>' if i in b.right
                                            else f"<td>{_inline(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                           for r in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.caption)}">'
                         f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
