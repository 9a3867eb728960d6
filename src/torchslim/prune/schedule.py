"""Sparsity schedules and the split of fine-tuning epochs over pruning steps: pure functions."""

from __future__ import annotations

__all__ = ["polynomial_schedule", "sparsity_at", "spread_epochs"]


def sparsity_at(final: float, step: int, steps: int, initial: float = 0.0) -> float:
    """Target sparsity after ``step`` of ``steps`` (Zhu & Gupta, 2017): s_t = s_f + (s_i - s_f)(1 - t/n)^3.

    Args:
        final: s_f, the sparsity reached at the last step.
        step: t, in 1..steps.
        steps: n; ``steps == 1`` is one-shot pruning (s_1 = s_f).
        initial: s_i, the sparsity before the first step.
    """
    if not 1 <= step <= steps:
        raise ValueError(f"step must be in 1..{steps}, got {step}")
    return final + (initial - final) * (1.0 - step / steps) ** 3


def polynomial_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """The targets s_1..s_n of the polynomial schedule; the last one is ``final``.

    Example:
        >>> [round(s, 4) for s in polynomial_schedule(0.8, 2)]
        [0.7, 0.8]
    """
    return [sparsity_at(final, t, steps, initial) for t in range(1, steps + 1)]


def spread_epochs(epochs: int, steps: int) -> list[int]:
    """Split ``epochs`` of fine-tuning over ``steps`` pruning steps as evenly as possible; later steps get the
    remainder, since the model is sparsest, and most damaged, at the end.

    Example:
        >>> spread_epochs(20, 10), spread_epochs(5, 3)
        ([2, 2, 2, 2, 2, 2, 2, 2, 2, 2], [1, 2, 2])
    """
    base, extra = divmod(epochs, steps)
    return [base + (1 if i >= steps - extra else 0) for i in range(steps)]
