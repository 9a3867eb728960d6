"""Cross-validation of the candidate a search would choose: its recipe run again on k folds of the training and
validation samples, a baseline trained for each fold by the recipe's own first stage.

The validation split decides among hundreds of candidates on a few hundred samples, and the smallest candidate it
measures within the limit is often one it flattered: on digits (180 validation images), a search's chosen
candidate lost none of the validation images its baseline gets right, and 5 test images net (a 1.39-point drop
against a 1-point limit). The preferences of ``search.noise`` narrow that, and a split this small cannot close it:
with no sample lost, a 95 % bound on 180 samples is still 2 points. On the folds, every pooled sample is answered
once by a model and a baseline that never trained on it and that no choice was made on: on digits, the drop is
measured on 1,437 samples instead of 180. The search ships the candidate it trained on the standard split, whose
figures are measured on its own file; the folds only decide whether its recipe's drop holds.
"""

from __future__ import annotations

from typing import Any, Iterable

from torchslim.search.feasibility import METRIC_CONSTRAINTS, is_confirmed, is_refuted
from torchslim.search.noise import counts_stderr, on_losses

CV_ATTR = "cv:"  # the study's user attribute ``cv:N`` holds trial N's cross-validation


def fold_override(index: int, of: int) -> str:
    """The ``--set`` that makes a recipe run on fold ``index`` of ``of`` (see ``domain.Fold``)."""
    return f"domain.data.fold={{index: {index}, of: {of}}}"


def judge(counts: Iterable[tuple[int, int, int]], margin: float, val_constraints: dict[str, Any],
          baseline_val_value: float) -> dict[str, Any]:
    """The folds' ``(losses, gains, n)`` summed and judged: the drop ``(losses - gains) / n`` plus ``margin``
    standard errors of it (``search.noise.counts_stderr``) against the metric constraints (``min_metric`` on the
    standard split's baseline minus that bound). A fold's gains count here, unlike the validation split's: no
    choice was made on its samples, so they are no one's luck."""
    counts = list(counts)
    losses, gains, n = (sum(c[i] for c in counts) for i in range(3))
    drop = (losses - gains) / n if n else 0.0
    stderr = counts_stderr(losses, gains, n)
    bound = drop + margin * stderr
    judged = on_losses(val_constraints, baseline_val_value, bound)
    failed = sorted(name for name, c in judged.items() if name.split(".")[0] in METRIC_CONSTRAINTS and not c["met"])
    return {"folds": len(counts), "losses": losses, "gains": gains, "samples": n, "drop": drop, "stderr": stderr,
            "bound": bound, "met": not failed, "failed": failed}


def cv_text(cv: dict[str, Any]) -> str:
    """``on 3 folds of 1,437 samples: drop 0.70 points (14 lost, 4 gained), bound 0.99 (standard error 0.29)``."""
    return (f"on {cv['folds']} folds of {cv['samples']:,} samples: drop {100 * cv['drop']:.2f} points "
            f"({cv['losses']} lost, {cv['gains']} gained), bound {100 * cv['bound']:.2f} (standard error "
            f"{100 * cv['stderr']:.2f})")


def cv_warning(best: dict[str, Any], folds: int, refuted: int) -> str | None:
    """What to tell the user about a feasible best that cross-validation did not confirm (``refuted``: how many
    candidates' drops this search found not to hold); None when it did, or with cross-validation off."""
    if not folds or is_confirmed(best):
        return None
    if is_refuted(best):
        others = f", nor did the {refuted - 1} tried before it" if refuted > 1 else ""
        failed = ", ".join(best["cv"]["failed"])
        return (f"best's drop did not hold on cross-validation ({cv_text(best['cv'])}; {failed} not met){others}: "
                f"it meets the constraints on the validation split only")
    before = f" ({refuted} tried before it did not hold)" if refuted else ""
    return (f"best was not cross-validated{before}: the time ran out first, and its drop is measured on the "
            f"validation split only; the same command with a longer --timeout resumes and checks it")


__all__ = ["CV_ATTR", "cv_text", "cv_warning", "fold_override", "judge"]
