"""The sampler of an ``auto`` study: the standard compressions first, then Optuna's."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["starting_points_first"]


def starting_points_first(base: Any, points: list[dict[str, Any]]) -> Any:
    """A sampler that answers trial ``k`` of a study with ``points[k]`` (the standard compressions, see
    ``space.starting_points``) and every later trial with ``base``. By trial number, which the storage gives out
    once, so processes sharing a study run each point once (Optuna's queue of enqueued trials may hand one
    waiting trial to two SQLite processes)."""
    import optuna

    class StartingPointsFirst(optuna.samplers.BaseSampler):
        def _point(self, trial: Any) -> Optional[dict[str, Any]]:
            return points[trial.number] if trial.number < len(points) else None

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return {} if self._point(trial) is not None else base.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
            return {} if self._point(trial) is not None else base.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            point = self._point(trial)
            if point is not None and name in point:
                return point[name]
            return base.sample_independent(study, trial, name, distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            base.before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            base.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            base.reseed_rng()

    return StartingPointsFirst()
