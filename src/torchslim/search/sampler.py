"""The sampler of an ``auto`` study: the standard compressions first, then Optuna's."""

from __future__ import annotations

from typing import Any, Callable, Optional

__all__ = ["starting_points_first", "tpe"]


def tpe(seed: int, **kwargs: Any) -> Any:
    """Optuna's TPE sampler, modelling the parameters jointly (``multivariate``; ``group``: one model per set of
    parameters that occur together, as the define-by-run space asks ``bits`` only of some methods).

    Modelled one parameter at a time, TPE proposed the same candidate again and again once one region held the
    candidates closest to feasible: on digits (``benchmarks/auto.py``, seed 0) 99 of 200 trials repeated an ended
    candidate, one of them 35 times, and the search ended with the 6 feasible candidates its first 34 trials had
    found. Replayed on that search's first 100 trials, 30 seeded samplers proposed 27 different candidates jointly,
    2 one at a time; searching jointly, the same benchmark ended with 20 feasible candidates (seed 0) and 46 (seed
    22; 42 one at a time)."""
    import warnings

    import optuna

    with warnings.catch_warnings():  # ``group`` is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, **kwargs)


def starting_points_first(make_base: Callable[[int], Any], points: list[dict[str, Any]]) -> Any:
    """A sampler that answers trial ``k`` of a study with ``points[k]`` (the standard compressions, see
    ``space.starting_points``; k counts no rerun of an interrupted candidate, so a resumed search runs every
    point) and every later trial with ``make_base(k)``, a sampler seeded by the trial's number.
    By trial number, which the storage gives out once, so processes sharing a study run each point once (Optuna's
    queue of enqueued trials may hand one waiting trial to two SQLite processes), and two processes that sample
    at the same moment draw from different seeds (one seeded sampler per process proposed the same candidate in
    both); one process still draws the same sequence for the same ``--seed``."""
    import optuna

    class StartingPointsFirst(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._number, self._sampler = -1, None
            self._asked: tuple[int, Optional[dict[str, Any]]] = (-1, None)

        def _base(self, trial: Any) -> Any:
            if trial.number != self._number:
                self._number, self._sampler = trial.number, make_base(trial.number)
            return self._sampler

        def _point(self, study: Any, trial: Any) -> Optional[dict[str, Any]]:
            if self._asked[0] != trial.number:  # asked once per parameter: the study's trials read once per trial
                # a rerun of an interrupted candidate (enqueued with its parameters) takes a number but no point
                reruns = sum(t.number < trial.number and "rerun_of" in t.user_attrs
                             for t in study.get_trials(deepcopy=False))
                index = trial.number - reruns
                self._asked = (trial.number, points[index] if index < len(points) else None)
            return self._asked[1]

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return {} if self._point(study, trial) is not None else self._base(trial).infer_relative_search_space(
                study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
            return {} if self._point(study, trial) is not None else self._base(trial).sample_relative(
                study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            point = self._point(study, trial)
            if point is not None and name in point:
                return point[name]
            return self._base(trial).sample_independent(study, trial, name, distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._base(trial).before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self._base(trial).after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:  # each trial's sampler is seeded by its number: nothing to reseed
            pass

    return StartingPointsFirst()
