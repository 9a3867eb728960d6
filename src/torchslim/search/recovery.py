"""How much of a candidate's validation metric its later stages win back, as the study's finished candidates show.

A candidate is stopped after an intermediate stage when its metric leaves it no hope of feasibility
(``feasibility.stop_floor``). What counts as hopeless depends on what the stages still to run recover: on digits,
in 35 kept benchmark searches, a candidate 3 validation samples below the baseline after a pruning stage, with a
distillation from the baseline still to run, ended 2.5 samples higher on average (4 or more for one in ten), while
after k-means with only its distillation left it gained 0.65. Of 24 candidates stopped 4 or 5 samples down and run to
their end, 3 ended feasible (2,568 to 3,047 bytes, smaller than most feasible candidates of their searches).
Pure functions of what finished candidates measured.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["RECOVERY_QUANTILE", "RECOVERY_MIN", "recovery", "stage_values", "tail"]

# The recovery a stop allows for: what at most one in ten comparable finished candidates exceeded.
RECOVERY_QUANTILE = 0.9
# Fewer comparable finished candidates than this say nothing: none is allowed for.
RECOVERY_MIN = 5


def tail(recipe: dict[str, Any], index: int) -> tuple[str, ...]:
    """The kinds of a recipe's stages from ``index`` on: ``("prune", "distill", "quantize", "distill")``; two
    candidates stopped or checked at stages with the same tail have the same kinds of stages still to run."""
    return tuple(next(iter(stage)) for stage in recipe["stages"][index:])


def stage_values(stage_records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """``{stage index: validation metric of the stage's saved model}`` of the stages a candidate ran (as kept in a
    trial's user attributes: string keys)."""
    return {str(r["index"]): float(r["artifact_val_metric"]) for r in stage_records
            if r.get("artifact_val_metric") is not None}


def recovery(finished: Iterable[dict[str, Any]], stages: tuple[str, ...]) -> float:
    """What the stages ``stages`` (a :func:`tail`, its first the stage just run) win back: the validation metric a
    finished candidate ended with, less the one it had after a stage with that tail, at
    :data:`RECOVERY_QUANTILE` over the finished candidates that had one; 0 when fewer than :data:`RECOVERY_MIN`
    did, or when later stages lose more often than not (never a reason to stop sooner).

    Args:
        finished: one per finished candidate: ``recipe``, ``stage_values`` (:func:`stage_values`) and
            ``val_value`` (its metric as the search judged it).
    """
    gains = []
    for record in finished:
        values, recipe, final = record.get("stage_values") or {}, record.get("recipe"), record.get("val_value")
        if not values or recipe is None or final is None:  # a record from before the figures were kept
            continue
        index = len(recipe["stages"]) - len(stages)
        if index < 0 or tail(recipe, index) != stages or str(index) not in values:
            continue
        gains.append(float(final) - values[str(index)])
    if len(gains) < RECOVERY_MIN:
        return 0.0
    gains.sort()
    return max(0.0, gains[math.ceil(RECOVERY_QUANTILE * len(gains)) - 1])
