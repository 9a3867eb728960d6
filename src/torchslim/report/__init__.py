"""The human-readable report: baseline against compressed, size and metric stage by stage, per-layer density
and bits, sensitivity, constraints met or not, runtime. ``report.md`` for the terminal, ``report.html`` with plots."""

from torchslim.report._layers import layer_stats
from torchslim.report._sections import (int8_slowdown_reason, render_html, render_markdown, runtime_markdown,
                                       slowdown_reason, summary_rows)

__all__ = ["int8_slowdown_reason", "layer_stats", "render_html", "render_markdown", "runtime_markdown",
           "slowdown_reason", "summary_rows"]
