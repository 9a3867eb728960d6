"""Constraints as numbers a search can rank: each constraint's relative violation, feasibility, the best
candidate for an objective and, when none is feasible, the closest one. Pure functions of measured metrics."""

from __future__ import annotations

import math
from typing import Any, Iterable

OBJECTIVES = ("size", "latency", "metric")
METRIC_CONSTRAINTS = ("max_metric_drop", "min_metric")  # judged on the validation split where a run reports it


def relative_violation(name: str, limit: float, measured: float, baseline_value: float | None = None) -> float:
    """How far a measurement is past its limit, as a fraction of what the limit allows (0 or less: met).

    ``max_*`` limits: (measured - limit) / limit; ``min_*`` limits: (limit - measured) / limit. The metric's
    limits are measured in the drop they allow, as the others are in their own unit: ``max_metric_drop``:
    (drop - limit) / limit (a 3-point drop against a 1-point limit is 2.0, as 3,000 bytes against 1,000 are);
    ``min_metric``: (limit - value) / (baseline - limit). Measured against the metric's full scale instead, a
    large drop looked cheap beside a few bytes too many, and a search drifted to small, broken models. A limit
    that allows no drop (0, or a minimum at or above the baseline) falls back to the metric's scale.
    """
    if name == "max_metric_drop":
        floor = (baseline_value if baseline_value is not None else 1.0) - limit
        return (measured - limit) / (limit if limit > 0 else floor if floor > 0 else 1.0)
    if name == "min_metric" and baseline_value is not None and baseline_value > limit:
        return (limit - measured) / (baseline_value - limit)
    if name.startswith("max_"):
        return (measured - limit) / limit
    if name.startswith("min_"):
        return (limit - measured) / limit
    raise ValueError(f"unknown constraint {name!r}")


def judged_constraints(metrics: dict[str, Any]) -> dict[str, Any]:
    """The constraints as every decision judges them: on the validation split (``val_constraints``) where the run
    reports it; the test split only reports the figures of the model the search chose."""
    return metrics.get("val_constraints", metrics["constraints"])


def violations(metrics: dict[str, Any]) -> dict[str, float]:
    """Each constraint of a run's metrics → its violation: 0.0 when met, else the (positive) relative violation.

    Judged as every decision is (:func:`judged_constraints`).
    """
    out = {}
    judged = judged_constraints(metrics)
    baseline = metrics.get("baseline_val_value", metrics.get("baseline_value"))
    for name, c in sorted(judged.items()):
        if c["met"]:
            out[name] = 0.0
        else:
            v = relative_violation(name.split(".")[0], c["limit"], c["measured"], baseline)
            out[name] = max(v, 1e-12)  # reported as not met: never ranked as met
    return out


def is_feasible(record: dict[str, Any]) -> bool:
    """Every constraint met as measured on the validation split: what ``torchslim run`` reports for the recipe."""
    return all(v <= 0 for v in record["violations"].values())


def sampler_violations(record: dict[str, Any]) -> dict[str, float]:
    """The violations the sampler is told: with the metric constraints judged with the drop's margin
    (``margin_violations``, see ``search.noise``) where the record has them, so that it steers towards candidates
    whose drop is within the limit beyond the validation split's noise."""
    return record.get("margin_violations", record["violations"])


def is_within_margin(record: dict[str, Any]) -> bool:
    """Feasible with the metric constraints judged on the drop plus its margin (the preferred candidates)."""
    return is_feasible(record) and all(v <= 0 for v in sampler_violations(record).values())


def is_within_losses(record: dict[str, Any]) -> bool:
    """Within the margin, and with the metric constraints judged on its losses alone (``loss_constraints``: the
    drop with none of its gains counted, plus their margin, the larger of the validation split's and the training
    inputs'; see ``search.noise``): the first preference. A record without those figures (a study searched before
    them, or ``--drop-margin 0``) is not."""
    return ("loss_constraints" in record and is_within_margin(record)
            and all(c["met"] for c in record["loss_constraints"].values()))


def is_confirmed(record: dict[str, Any]) -> bool:
    """Cross-validated (``search.crossval``) with its drop within the limits."""
    return bool(record.get("cv", {}).get("met"))


def is_refuted(record: dict[str, Any]) -> bool:
    """Cross-validated with its drop past a limit."""
    return "cv" in record and not record["cv"]["met"]


def unconfirmed_line(best: dict[str, Any], val_samples: int | None = None, best_dir: str = "DIR/best") -> str | None:
    """What to tell the user when ``best`` meets the metric's constraints as measured on the validation split but
    not with the drop's margin (no finished candidate did): the split cannot tell its drop from one past the
    limit. ``val_samples``: the split's size, for how much one sample weighs. None when there is nothing to say."""
    if not is_feasible(best) or is_within_margin(best):  # without margin figures, feasible is within the margin
        return None
    judged = judged_constraints(best)
    parts = [f"{name} is {format_number(judged[name]['measured'])} on the validation split, within "
             f"{format_number(c['limit'])} as measured but not with its margin ({format_number(c['measured'])})"
             for name, c in sorted(best["margin_constraints"].items()) if not c["met"]]
    weight = f" (one of its {val_samples:,} samples is {100 / val_samples:.2g} points)" if val_samples else ""
    return (f"best's {'; '.join(parts)}: no candidate was within it, and a split this small{weight} cannot tell "
            f"such a drop from one past the limit. Measure best on more data (torchslim eval {best_dir} --domain "
            f"OTHER.yaml) or give the domain a larger validation split (data.val_fraction)")


def _objective_key(record: dict[str, Any], objective: str) -> tuple[float, ...]:
    """What ranks candidates: bytes, speed-up and the validation metric (never the test split's)."""
    size, value, speedup = record["size_bytes"], record.get("val_value", record["value"]), record["speedup_batch_64"]
    if objective == "size":
        return (size, -value, -speedup)
    if objective == "latency":
        return (-speedup, size, -value)
    if objective == "metric":
        return (-value, size, -speedup)
    raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def preference_tiers(records: Iterable[dict[str, Any]], objective: str = "size") -> list[list[dict[str, Any]]]:
    """The feasible records in the search's tiers of preference: those within the limit by their losses alone
    (:func:`is_within_losses`), the others within it by the margin (:func:`is_within_margin`), the rest; each
    tier best first for ``objective`` (ties: the other two objectives, then the earlier trial)."""
    tiers: list[list[dict[str, Any]]] = [[], [], []]
    for r in records:
        if is_feasible(r):
            tiers[0 if is_within_losses(r) else 1 if is_within_margin(r) else 2].append(r)
    return [_ranked(tier, objective) for tier in tiers]


def _ranked(records: Iterable[dict[str, Any]], objective: str) -> list[dict[str, Any]]:
    """Best first for ``objective``; ties: the other two objectives, then the earlier trial."""
    return sorted(records, key=lambda r: (*_objective_key(r, objective), r["number"]))


def choose_best(records: Iterable[dict[str, Any]], objective: str = "size") -> dict[str, Any] | None:
    """The best record for ``objective`` (ties: the other two objectives, then the earlier trial) among the
    feasible ones whose drop held on cross-validation (:func:`is_confirmed`); when none did, among the feasible
    ones whose losses alone are within the limit by their margin (:func:`is_within_losses`); then among those
    whose drop is within it by the margin (:func:`is_within_margin`); then among the feasible ones; in each of
    these, one whose drop did not hold on cross-validation (:func:`is_refuted`) comes after the others (its
    validation figures still place it before a candidate of a later one, which may not have been tried); when
    none is feasible, the closest: the smallest summed relative violation (ties as before).

    Preferring the candidates within the margin keeps the search from choosing, among many, the one a small
    validation split flatters most, and counting losses alone keeps it from choosing the one whose lucky gains
    hid its losses; falling back to the feasible ones keeps a candidate that meets the constraints as measured
    (as ``run`` reports them) from being called infeasible because the split is small.

    Args:
        records: one per finished candidate, with ``number``, ``value``, ``size_bytes``, ``speedup_batch_64``,
            ``violations`` (see :func:`violations`) and optionally ``margin_violations``,
            ``loss_constraints`` and ``cv``.
    Returns:
        the chosen record, or None when there are no records.
    """
    records = list(records)
    confirmed = _ranked((r for r in records if is_feasible(r) and is_confirmed(r)), objective)
    for tier in (confirmed, *preference_tiers(records, objective)):
        if tier:  # in a tier, one whose drop did not hold on cross-validation after every other
            return min(tier, key=is_refuted)
    if not records:
        return None
    return min(records, key=lambda r: (math.fsum(r["violations"].values()), *_objective_key(r, objective),
                                       r["number"]))


def format_number(x: float) -> str:
    """``2911`` → ``2,911``; ``0.0312`` → ``0.0312``; ``3.14159`` → ``3.142``."""
    if float(x).is_integer() and abs(x) >= 1:
        return f"{int(x):,}"
    return f"{x:.4g}"


def infeasible_line(best: dict[str, Any], records: Iterable[dict[str, Any]] = ()) -> str:
    """``max_size_bytes: limit 50, closest 2,911; max_metric_drop on validation: limit 0.01, closest 0 (trial 3),
    best 0.0306``: each constraint the closest candidate (the one saved as ``best``) fails, with its limit and the
    closest value any finished candidate reached (which one, and best's own value, where another did better), as
    feasibility judged them (:func:`judged_constraints`: the metric's on the validation split, where the run
    reports it)."""
    records = [r for r in records if r is not best] + [best]
    parts = []
    for name, c in judged_constraints(best).items():
        if c["met"]:
            continue
        reached = [(judged_constraints(r)[name]["measured"], r["number"]) for r in records
                   if name in judged_constraints(r)]
        closest = (min if name.startswith("max_") else max)(reached, key=lambda m: (m[0], m[1] != best["number"]))
        split = " on validation" if "val_constraints" in best and name.split(".")[0] in METRIC_CONSTRAINTS else ""
        other = (f" (trial {closest[1]}), best {format_number(c['measured'])}" if closest[1] != best["number"]
                 else "")
        parts.append(f"{name}{split}: limit {format_number(c['limit'])}, closest {format_number(closest[0])}{other}")
    return "; ".join(parts)


def stop_floor(constraints: dict[str, Any], baseline_value: float, slack: float) -> float | None:
    """The validation metric below which a candidate is stopped after an intermediate stage, or None (no metric
    constraint, ``slack`` 0, or a floor above the baseline: nothing to judge by).

    The floor is the lowest metric the constraints accept (``baseline - max_metric_drop``, ``min_metric``; the
    higher if both); the candidate is stopped below ``floor - slack * (baseline - floor)``, i.e. when it has lost
    ``1 + slack`` times the drop the constraints allow.
    """
    floors = [baseline_value - constraints["max_metric_drop"]] if constraints.get("max_metric_drop") is not None \
        else []
    if constraints.get("min_metric") is not None:
        floors.append(constraints["min_metric"])
    if not floors or slack <= 0:
        return None
    floor = max(floors)
    allowed = baseline_value - floor
    return floor - slack * allowed if allowed > 0 else None


def metric_violations(constraints: dict[str, Any], baseline_value: float, value: float) -> dict[str, float]:
    """The metric constraints' violations (as :func:`violations` gives them) of a model with metric ``value``: what
    a candidate stopped before its end is known to violate at least."""
    out = {}
    if constraints.get("max_metric_drop") is not None:
        out["max_metric_drop"] = relative_violation("max_metric_drop", constraints["max_metric_drop"],
                                                    baseline_value - value, baseline_value)
    if constraints.get("min_metric") is not None:
        out["min_metric"] = relative_violation("min_metric", constraints["min_metric"], value, baseline_value)
    return {k: max(v, 1e-12) for k, v in out.items()}
