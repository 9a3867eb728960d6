"""What a search leaves in its folder after every finished candidate, each written atomically: ``best/`` (a copy
of the chosen candidate's artifact), ``best_recipe.yaml`` (runnable), ``trials.csv`` and ``report.html``."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

import yaml

from torchslim.artifact import fresh_dir, write_bytes_atomic
from torchslim.artifact._atomic import replace_dir
from torchslim.search.feasibility import is_confirmed, is_feasible, is_refuted, is_within_losses, is_within_margin

CSV_COLUMNS = ("number", "state", "feasible", "within_margin", "within_losses", "candidate", "val_value",
               "baseline_val_value", "value", "baseline_value", "size_bytes", "compression_ratio", "speedup_batch_1",
               "speedup_batch_64", "latency_ms_batch_1", "latency_ms_batch_64", "val_drop_stderr", "val_losses",
               "val_gains", "train_losses", "train_samples", "cv_drop", "cv_bound", "cv_holds", "violation",
               "failed_constraints", "note")


def copy_artifact(src: Path, dst: Path) -> None:
    """Swap a copy of the artifact folder ``src`` into ``dst`` (a reader sees the old copy or the new one)."""
    staging = fresh_dir(dst)
    try:
        for f in sorted(src.iterdir()):
            shutil.copy2(f, staging / f.name)
        replace_dir(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class _PlainDumper(yaml.SafeDumper):
    """Writes a value used twice (one fine-tune mapping shared by two stages) twice, not as an &anchor/*alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def recipe_yaml(recipe: dict[str, Any]) -> str:
    """A recipe as the YAML a user would write: keys in their order, no anchors."""
    return yaml.dump(recipe, Dumper=_PlainDumper, sort_keys=False)


def recipe_text(record: dict[str, Any], out: Path) -> str:
    """``best_recipe.yaml``: the chosen candidate's recipe, with the command that reproduces it."""
    head = (f"# torchslim run {out / 'best_recipe.yaml'} --out OUT --threads {record['threads']}\n"
            f"# trial {record['number']} of torchslim auto ({record['brief']}): {record['metric']} "
            f"{record['value']:.4f}, {record['size_bytes']:,} bytes; the same thread count reproduces both.\n"
            f"# best/ artifact_sha256: {record['artifact_sha256']}\n"
            f"# Its first stage trains the baseline, or is skipped where the domain names trained weights (the "
            f"search did it once, in {out / 'baseline'}/, and every candidate resumed after that stage).\n")
    return head + recipe_yaml(record["recipe"])


def trials_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    return buf.getvalue()


def csv_row(number: int, state: str, record: dict[str, Any] | None, stopped: dict[str, Any] | None = None,
            same_as: dict[str, Any] | None = None, error: str | None = None,
            brief: str | None = None) -> dict[str, Any]:
    """One line of ``trials.csv``: a finished candidate's figures; for one stopped early (state ``PRUNED``), in
    ``note``, where and why (``stopped after stage 2 (prune): val 0.8611 < stop floor 0.9389``); for one the
    sampler proposed again, or whose sensitivity allocation allots what an earlier one's did, which trial it repeats
    (``same candidate as trial 7``: not run again); for one that failed (state ``FAIL``), its error and, as
    ``brief``, the candidate it was."""
    row: dict[str, Any] = {"number": number, "state": state}
    if error is not None:
        row.update(note=f"failed: {error}", candidate=brief or "")
    if stopped is not None:
        row.update(candidate=stopped["brief"], feasible=False, within_margin=False, within_losses=False,
                   val_value=stopped["val_value"], baseline_val_value=stopped["baseline_val_value"],
                   note="stopped " + stopped_text(stopped))
    if same_as is not None:
        why = ": its sensitivity analysis allots the same sparsities" if same_as.get("allots") else ""
        row.update(candidate=same_as["brief"], note=f"same candidate as trial {same_as['number']}{why}")
    if record is not None:
        row.update({k: record[k] for k in ("value", "baseline_value", "size_bytes", "compression_ratio",
                                           "speedup_batch_1", "speedup_batch_64")})
        row.update({k: record.get(k) for k in ("val_value", "baseline_val_value", "val_drop_stderr", "val_losses",
                                               "val_gains", "train_losses", "train_samples")})
        row.update(candidate=record["brief"], feasible=is_feasible(record), within_margin=is_within_margin(record),
                   within_losses=is_within_losses(record),
                   latency_ms_batch_1=record["latency_ms"]["batch_1"],
                   latency_ms_batch_64=record["latency_ms"]["batch_64"],
                   violation=sum(record["violations"].values()),
                   failed_constraints=" ".join(k for k, v in record["violations"].items() if v > 0))
        if "cv" in record:  # cross-validated (search.crossval)
            row.update(cv_drop=record["cv"]["drop"], cv_bound=record["cv"]["bound"], cv_holds=record["cv"]["met"])
        if record.get("busy"):
            row.update(note="timed on a busy machine or unsteadily: its latencies may be far off")
    return row


def short_of_preference(record: dict[str, Any]) -> str:
    """Which of the search's preferences a feasible candidate misses (see ``feasibility.choose_best``): "" for
    none, ``its drop did not hold on cross-validation``, ``within the margin, not by its losses``, ``not by the
    margin``."""
    if is_refuted(record):
        return "its drop did not hold on cross-validation"
    if is_confirmed(record) or is_within_losses(record) or (is_within_margin(record)
                                                           and "loss_constraints" not in record):
        return ""
    return "within the margin, not by its losses" if is_within_margin(record) else "not by the margin"


def stopped_text(stopped: dict[str, Any]) -> str:
    won_back = stopped.get("won_back", 0.0)  # absent from studies searched before it
    return (f"after stage {stopped['stage']} ({stopped['stage_name']}): val {stopped['val_value']:.4f} < stop floor "
            f"{stopped['floor']:.4f}" + (f" ({stopped['floor'] + won_back:.4f} less {won_back:.4f} that the stages "
                                         f"still to run won back in finished candidates)" if won_back else ""))


def _pareto(points: list[tuple[float, float]], higher_x_better: bool) -> list[tuple[float, float]]:
    """The non-dominated points (metric higher is better; x lower is better unless ``higher_x_better``), by x."""
    sign = -1 if higher_x_better else 1
    front = [p for p in points
             if not any((sign * q[0] <= sign * p[0] and q[1] >= p[1]) and q != p for q in points)]
    return sorted(set(front))


def _val_value(record: dict[str, Any]) -> float:
    return record.get("val_value", record["value"])  # records of studies searched before validation figures


# The terminal's front: the objective's axis (higher better?) against the validation metric (what the search decides on)
FRONT_AXES = {"size": ("size_bytes", False), "latency": ("speedup_batch_64", True), "metric": ("size_bytes", False)}


def front_lines(records: list[dict[str, Any]], best: dict[str, Any], objective: str, most: int = 10) -> list[str]:
    """The feasible candidates no other feasible one beats on both the objective's axis (bytes, or batch-64
    speed-up for ``latency``) and the validation metric, as lines for the terminal, ``best`` marked; [] when
    none is feasible."""
    key, higher = FRONT_AXES[objective]
    feasible = [r for r in records if is_feasible(r)]
    points = set(_pareto([(r[key], _val_value(r)) for r in feasible], higher))
    front = sorted((r for r in feasible if (r[key], _val_value(r)) in points),
                   key=lambda r: (-r[key] if higher else r[key], r["number"]))
    if not front:
        return []
    metric = best["metric"]
    lines = [f"Pareto front: {len(front)} feasible candidate{'s' if len(front) != 1 else ''} that no other beats on "
             f"both {'speed-up' if higher else 'bytes'} and validation {metric}:",
             f"  {'trial':>5}  {'bytes':>9}  {'val ' + metric:>14}  {'test ' + metric:>14}  {'speed-up b64':>12}"]
    for r in front[:most]:
        short = short_of_preference(r)
        lines.append(f"  {r['number']:>5}  {r['size_bytes']:>9,}  {100 * _val_value(r):>12.2f} %  "
                     f"{100 * r['value']:>12.2f} %  {r['speedup_batch_64']:>11.2f}x  {r['brief']}"
                     + (f" (feasible, {short})" if short else "")
                     + ("  <- best" if r["number"] == best["number"] else ""))
    if len(front) > most:
        lines.append(f"  ... and {len(front) - most} more in trials.csv")
    if all(r["number"] != best["number"] for r in front):
        lines.append(f"  best, trial {best['number']}, is not on it: the candidates that beat it are feasible as "
                     f"measured but short of the search's preference (see --drop-margin, --folds)")
    return lines


def pareto_png(records: list[dict[str, Any]], best: dict[str, Any], metric: str) -> bytes:
    """Two panels: metric vs bytes and metric vs batch-64 speed-up; feasible points filled, the Pareto front
    drawn, the best candidate labelled."""
    from torchslim.report._plots import _figure, _png

    fig = _figure(10.0, 4.0)
    axes = fig.subplots(1, 2)
    for ax, key, label, higher in ((axes[0], "size_bytes", "artifact bytes (log)", False),
                                   (axes[1], "speedup_batch_64", "speed-up at batch 64 (baseline / candidate)", True)):
        for feasible, style in ((True, {"color": "#2a9d4b", "label": "feasible"}),
                                (False, {"facecolors": "none", "edgecolors": "#c44e52", "label": "infeasible"})):
            pts = [(r[key], 100 * r["value"]) for r in records if is_feasible(r) == feasible]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=30, **style)
        front = _pareto([(r[key], 100 * r["value"]) for r in records], higher)
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="#888", linewidth=1, label="Pareto front")
        ax.annotate(f"best (trial {best['number']})", (best[key], 100 * best["value"]), xytext=(8, -14),
                    textcoords="offset points", fontsize=8, arrowprops={"arrowstyle": "-", "color": "#333"})
        ax.scatter([best[key]], [100 * best["value"]], s=90, marker="*", color="#333", zorder=3)
        if key == "size_bytes":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"test {metric} (%)")
        ax.legend(fontsize=7)
    return _png(fig)


def report_html(records: list[dict[str, Any]], best: dict[str, Any], title: str, summary: str) -> str:
    from torchslim.report._document import Figure, Heading, Paragraph, Table, to_html
    from torchslim.report._plots import plots_available

    blocks: list[Any] = [Heading(1, title), Paragraph(summary)]
    if plots_available():
        blocks.append(Figure(pareto_png(records, best, best["metric"]),
                             "Candidates: filled = every constraint met; dashed = Pareto front; star = best."))
    rows = tuple((str(r["number"]), r["brief"], f"{100 * r['value']:.2f}", f"{r['size_bytes']:,}",
                  f"{r['compression_ratio']:.1f}x", f"{r['speedup_batch_64']:.2f}x",
                  ", ".join(filter(None, ("yes", short_of_preference(r)))) if is_feasible(r)
                  else "no: " + ", ".join(k for k, v in r["violations"].items() if v > 0))
                 for r in sorted(records, key=lambda r: r["number"]))
    blocks += [Heading(2, "Candidates"),
               Table(("trial", "candidate", f"{best['metric']} %", "bytes", "ratio", "speed-up b64", "feasible"),
                     rows, frozenset({0, 2, 3, 4, 5}))]
    return to_html(title, blocks)


def write_outputs(out: Path, records: list[dict[str, Any]], rows: list[dict[str, Any]], best: dict[str, Any],
                  title: str, summary: str) -> None:
    """Rewrite ``best/``, ``best_recipe.yaml``, ``trials.csv`` and ``report.html`` in ``out``, each atomically."""
    src = out / "trials" / str(best["number"]) / "artifact"
    copy_artifact(src, out / "best")
    write_bytes_atomic(out / "best_recipe.yaml", recipe_text(best, out).encode())
    write_bytes_atomic(out / "trials.csv", trials_csv(rows).encode())
    write_bytes_atomic(out / "report.html", report_html(records, best, title, summary).encode())


__all__ = ["copy_artifact", "csv_row", "front_lines", "recipe_text", "report_html", "short_of_preference",
           "trials_csv", "write_outputs"]
