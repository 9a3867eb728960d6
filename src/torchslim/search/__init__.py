"""``torchslim auto``: a joint search over distillation, pruning and quantization that the domain's constraints
drive. A search space (``space``), constraints as relative violations and the best / closest choice
(``feasibility``), an Optuna study whose candidates are recipes run by ``runner.run_recipe`` (``study``), each
resumed after its first stage from the baseline the search trains once (``baseline``), and the outputs rewritten
after every candidate (``outputs``). Optuna is imported when a search starts."""

from torchslim.search.feasibility import choose_best, infeasible_line, is_feasible, relative_violation, violations
from torchslim.search.space import SearchSettings, describe, recipe_from_params, suggest_params
from torchslim.search.study import AutoSearch, SearchResult, run_auto

__all__ = ["AutoSearch", "SearchResult", "SearchSettings", "choose_best", "describe", "infeasible_line",
           "is_feasible", "recipe_from_params", "relative_violation", "run_auto", "suggest_params", "violations"]
