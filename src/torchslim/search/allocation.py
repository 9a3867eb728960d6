"""What a sensitivity allocation will allot, known before a candidate runs: candidates that differ only in a
pruning stage's nominal sparsity above what its sensitivity analysis allows run the same model.

A ``sensitivity`` pruning stage sets every layer's sparsity to the largest of its grid (the stage's choices up to its
nominal sparsity) whose one-layer cost, and that of every smaller one, is within the bound
(:func:`torchslim.prune.sensitivity.overrides_from_sensitivity`). Above every layer's first failing sparsity the
nominal changes nothing, and the analysis, measured on the same model, gives the same table: so the per-layer
sparsities a candidate's stage will choose can be read from the tables earlier candidates measured on the same
model (the same width, and for magnitude after structured pruning, the same structured cut and fine-tuning). The
search judges candidates that allot the same sparsities, and match in every other parameter, as one (27 searches of
``benchmarks/auto.py``: 140 of 2,738 finished candidates were such repeats, 128 of them knowable from the tables
measured before them, up to 44 in one search; 60 of those pairs checked, every one's weights bit-identical).

Each stage's table is kept under the key of the model it was measured on, ``prefix|method``: the prefix is the
thread count and width, then for a structured cut before magnitude pruning the layers' allotted sparsities and its
fine-tuning epochs.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from torchslim.search.space import sensitivity_grid

# one stage's table: the unpruned model's metric and, per layer, sparsity -> metric (None where the layer would be
# emptied)
Table = dict[str, Any]
PRUNE_KEYS = (("structured", "structured"), ("sparsity", "magnitude"))  # params key, stage method, in stage order


def allotted(table: Table, grid: list[float], max_drop: float) -> Optional[dict[str, float]]:
    """Per layer, the sparsity a stage with this ``grid`` and bound would choose from ``table`` (as
    ``overrides_from_sensitivity`` does, the metric higher-is-better); None when the table lacks a sparsity the
    choice depends on."""
    out = {}
    for layer, metrics in table["rows"].items():
        chosen = 0.0
        for s in grid:
            if s not in metrics:
                return None
            m = metrics[s]
            if m is None or table["baseline"] - m > max_drop:
                break
            chosen = s
        out[layer] = chosen
    return out


def _next_prefix(prefix: str, method: str, chosen: dict[str, float], epochs: int) -> str:
    return f"{prefix}|{method}:{json.dumps(chosen, sort_keys=True)}|ft{epochs}"


def _first_prefix(params: dict[str, Any], threads: int) -> str:
    # the shared baseline and student are trained once per thread count (float sums differ with it)
    return f"t{threads}|w{float(params.get('width', 1.0)):g}"


def measured_tables(params: dict[str, Any], stage_records: list[dict[str, Any]], threads: int) -> dict[str, Table]:
    """The sensitivity tables a candidate's run, on ``threads`` threads, measured (its pruning stages' records, in
    order), by key."""
    prefix, out = _first_prefix(params, threads), {}
    for record in (r for r in stage_records if r.get("stage") == "prune" and "sensitivity" in r):
        rows: dict[str, dict[float, Any]] = {}
        for row in record["sensitivity"]:
            rows.setdefault(row["layer"], {})[float(row["sparsity"])] = row["val_metric"]
        out[f"{prefix}|{record['method']}"] = {"baseline": record["sensitivity_baseline"], "rows": rows}
        chosen = {n: float(s) for n, s in (item.rsplit(" ", 1) for item in record["sensitivity_overrides"])}
        prefix = _next_prefix(prefix, record["method"], chosen, int(params["epochs"]))
    return out


def to_attr(tables: dict[str, Table]) -> dict[str, Any]:
    """JSON-safe form (a study's user attribute): sparsities as strings."""
    return {k: {"baseline": t["baseline"], "rows": {n: {repr(s): m for s, m in r.items()}
                                                    for n, r in t["rows"].items()}} for k, t in tables.items()}


def from_attr(attr: dict[str, Any]) -> dict[str, Table]:
    """The tables :func:`to_attr` stored."""
    return {k: {"baseline": t["baseline"], "rows": {n: {float(s): m for s, m in r.items()}
                                                    for n, r in t["rows"].items()}} for k, t in attr.items()}


def merge(into: dict[str, Table], tables: dict[str, Table]) -> None:
    """Add ``tables``' rows to ``into`` (the same model's analysis gives the same numbers)."""
    for key, table in tables.items():
        held = into.setdefault(key, {"baseline": table["baseline"], "rows": {}})
        for layer, metrics in table["rows"].items():
            held["rows"].setdefault(layer, {}).update(metrics)


def identity(params: dict[str, Any], tables: dict[str, Table], max_drop: float, threads: int) -> Optional[str]:
    """The model a sensitivity-allocated candidate builds, as a string equal for candidates that build the same
    one: its parameters with each pruning stage's nominal sparsity replaced by the sparsities it will allot. None
    when the candidate allocates by the stage, or ``tables`` cannot tell what a stage will allot.

    Args:
        params: the candidate's parameters (``search.space.suggest_params``).
        tables: the study's measured tables, by key (:func:`measured_tables`, :func:`merge`).
        max_drop: the stages' per-layer bound (``search.space.sensitivity_bound``).
        threads: the thread count the candidate runs on.
    """
    if params.get("allocation") != "sensitivity":
        return None
    prefix = _first_prefix(params, threads)
    same = {k: v for k, v in params.items() if k not in ("structured", "sparsity")}
    for key, method in PRUNE_KEYS:
        if params.get(key, 0.0) <= 0:
            continue
        table = tables.get(f"{prefix}|{method}")
        chosen = None if table is None else allotted(table, sensitivity_grid(key, params[key]), max_drop)
        if chosen is None:
            return None
        same[key] = chosen
        prefix = _next_prefix(prefix, method, chosen, int(params["epochs"]))
    return json.dumps(same, sort_keys=True)
