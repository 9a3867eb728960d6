"""``torchslim auto``: a joint search over distillation, pruning and quantization that the domain's constraints
drive. A search space and its standard starting points (``space``), constraints as relative violations, the stop
floor and the best / closest choice (``feasibility``), the metric drop's uncertainty on the validation split
(``noise``), the study's storage (``storage``) and sampler, standard points first (``sampler``), an Optuna study
whose candidates are recipes run by ``runner.run_recipe`` and stopped when hopeless
(``study``), each resumed after the stages it shares with others (the baseline, a student), run once per search
(``baseline``), and the outputs rewritten after every candidate (``outputs``). Optuna is imported when a search
starts."""

from torchslim.search.feasibility import (choose_best, infeasible_line, is_feasible, relative_violation, stop_floor,
                                          violations)
from torchslim.search.space import SearchSettings, describe, recipe_from_params, starting_points, suggest_params
from torchslim.search.study import AutoSearch, SearchResult, run_auto

__all__ = ["AutoSearch", "SearchResult", "SearchSettings", "choose_best", "describe", "infeasible_line",
           "is_feasible", "recipe_from_params", "relative_violation", "run_auto", "starting_points", "stop_floor",
           "suggest_params", "violations"]
