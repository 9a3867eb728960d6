"""What a search tells the user beside its result about the baseline every drop is measured from: at chance,
beaten by far, or, for cross-validation, given rather than trained."""

from __future__ import annotations

import math
from typing import Any, Optional

from torchslim.domain import Domain

# how far past the validation split's noise a candidate must beat the baseline for it to look undertrained: the
# net gain in standard deviations of a sign test (3: about 1 in 740 by chance)
SURPASSED_Z = 3.0


def baseline_at_chance(domain: Domain, num_classes: int, best: Optional[dict[str, Any]]) -> list[str]:
    """A baseline no better than chance makes every drop meaningless: say so, and what to change."""
    if best is None or domain.metric not in ("accuracy", "top5") or num_classes < 2:
        return []
    chance = min(1.0, (5 if domain.metric == "top5" else 1) / num_classes)
    value = best.get("baseline_val_value", best["baseline_value"])
    if value > chance + 0.1 * (1 - chance):  # more than a tenth of the way from chance to perfect
        return []
    at_chance = f"about chance ({chance:.4f} for {num_classes} classes): every candidate's drop is measured from it"
    if domain.model.weights is not None:  # not trained by the search: its options cannot help
        return [f"the baseline, the domain's model.weights ({domain.model.weights}), scores {value:.4f} on the "
                f"validation split, {at_chance}; give the weights of a trained model, or none and the search trains "
                f"one (--baseline-epochs, --lr)"]
    return [f"the baseline scores {value:.4f} on the validation split, {at_chance}; train it longer "
            f"(--baseline-epochs, --lr) or give the domain trained weights (model.weights)"]


def baseline_surpassed(domain: Domain, records: list[dict[str, Any]]) -> list[str]:
    """A baseline that a compressed candidate beats by far more than the validation split's noise is undertrained:
    every drop measured from it flatters the candidates. Said for the candidate that gained most net, when its
    gains less its losses exceed ``SURPASSED_Z`` times their standard deviation under no true difference (a sign
    test on the samples the two disagree on)."""
    counted = [r for r in records if r.get("val_gains") is not None and r.get("val_losses") is not None]
    if not counted:
        return []
    top = max(counted, key=lambda r: (r["val_gains"] - r["val_losses"], -r["number"]))
    gains, losses = top["val_gains"], top["val_losses"]
    if gains - losses <= SURPASSED_Z * math.sqrt(gains + losses):
        return []
    fix = (f"give the domain the weights of a better-trained model ({domain.model.weights} now)"
           if domain.model.weights is not None else "train it longer (--baseline-epochs, --lr)")
    return [f"trial {top['number']} ({top['brief']}) scores {top['val_value']:.4f} on the validation split, the "
            f"baseline {top['baseline_val_value']:.4f} ({gains} samples gained, {losses} lost): the baseline looks "
            f"undertrained, and every candidate's drop is measured from it; {fix}"]


def folds_from_given_weights(domain: Domain, records: list[dict[str, Any]]) -> list[str]:
    """Folds whose baseline is the domain's trained weights (the search trains none) hold out from the
    compression's training only: the weights may have been trained on the samples a fold validates on. Said once
    a candidate ran on the folds (not one judged as its twin was)."""
    if domain.model.weights is None or not any("cv" in r and "like" not in r["cv"] for r in records):
        return []
    return [f"cross-validation started every fold from the domain's model.weights ({domain.model.weights}); if "
            f"they were trained on the samples it pools (training and validation), its verdicts check the "
            f"compression's own training, not held-out answers"]
