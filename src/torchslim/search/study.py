"""The Optuna study behind ``torchslim auto``: storage, sampler, the objective (a candidate recipe run by
``runner.run_recipe``), the constraints as feasibility, and the loop that rewrites the outputs after every
finished candidate."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from torchslim._errors import ConfigError
from torchslim.artifact import write_bytes_atomic
from torchslim.artifact._atomic import process_alive
from torchslim.domain import Domain
from torchslim.evaluate import speedup, timing_caveat
from torchslim.search import allocation, recovery
from torchslim.search.advice import baseline_at_chance, baseline_surpassed, folds_from_given_weights
from torchslim.search.baseline import ensure_baseline, shared_seconds, start_from_baseline
from torchslim.search.crossval import CV_ATTR, cv_text, cv_warning, fold_override, judge
from torchslim.search.feasibility import (METRIC_CONSTRAINTS, OBJECTIVES, choose_best, infeasible_line, is_feasible,
                                          is_refuted, metric_violations, preference_tiers, sampler_violations,
                                          stop_floor, unconfirmed_line, violations)
from torchslim.search.noise import (correct_per_sample, counts_stderr, losses_bound, on_losses, paired_counts,
                                   training_sample, with_margin)
from torchslim.search.outputs import (csv_row, recipe_yaml, short_of_preference, stopped_text, trials_csv,
                                     write_outputs)
from torchslim.search.sampler import starting_points_first, tpe
from torchslim.search.space import (SearchSettings, describe, recipe_from_params, sensitivity_bound, settings_for_data,
                                    shared_stages, starting_points, suggest_params)
from torchslim.search.storage import check_storage_url, default_storage, open_storage

# metric (higher is better), artifact bytes, speed-up at batch 64 (baseline / candidate, measured side by side)
DIRECTIONS = ("maximize", "minimize", "maximize")


STUDY_MARKER = "study.json"  # which study an output folder's trials belong to
CV_PLANNED = 5  # candidates whose cross-validation a timed search keeps time for
CV_MOST = 10  # candidates a search process cross-validates at most (one that holds ends it)
INTERRUPTED = "interrupted"  # a trial's user attribute: why its candidate did not finish (it runs again)


def check_domain(domain: Domain) -> None:
    """``auto`` needs constraints: they are what it searches for; and a classifier (its space is the classifier
    stages')."""
    if domain.task == "sentence-embedding":
        raise ConfigError("task", "auto searches classifiers; for a sentence-embedding domain run one of the "
                                  "recipes in recipes/minilm (int8, distilled students)", domain.source)
    if not any(v is not None for v in domain.constraints.model_dump().values()):
        raise ConfigError("constraints", "auto needs at least one constraint (max_size_bytes, max_latency_ms, "
                                         "max_metric_drop, min_metric, min_speedup, min_compression_ratio)",
                          domain.source)
    if domain.data.fold is not None:  # the search cuts its own folds from the standard split (--folds)
        raise ConfigError("data.fold", "auto searches on the domain's standard split and cross-validates its best "
                                       "on folds of it itself (--folds): remove data.fold", domain.source)
    if domain.constraints.max_metric_drop == 0:  # nothing to rank by: every lost sample would weigh the same
        raise ConfigError("constraints.max_metric_drop", "must be positive for auto: a search needs a drop it may "
                                                         "spend (0 allows none; give the smallest you accept)",
                          domain.source)


def domain_ref(domain: Domain) -> Any:
    """What a candidate recipe's ``domain`` key holds: the domain file's absolute path, else the mapping."""
    if domain.source is not None and Path(domain.source).is_file():
        return str(Path(domain.source).resolve())
    return domain.to_dict()


def _identity_changes(recorded: dict[str, Any], now: dict[str, Any]) -> str:
    """``--baseline-epochs 10 (now 40), --seed 0 (now 1)``: what a study was searched with that this command
    changes; the domain as a whole (its file's content)."""
    flags = {"baseline_epochs": "--baseline-epochs", "max_epochs": "--max-epochs", "lr": "--lr",
             "drop_margin": "--drop-margin"}
    changes = ["another domain"] if recorded.get("domain") != now["domain"] else []
    if recorded.get("seed") != now["seed"]:
        changes.append(f"--seed {recorded.get('seed')} (now {now['seed']})")
    old, new = recorded.get("settings") or {}, now["settings"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{flags.get(key, key)} {old.get(key)} (now {new.get(key)})")
    return ", ".join(changes) or "other settings"


def record_of(number: int, metrics: dict[str, Any], params: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """One finished candidate as the search keeps it (an Optuna user attribute): its measured metrics, as
    ``run`` reports them, and its recipe."""
    keys = ("metric", "value", "baseline_value", "size_bytes", "baseline_size_bytes", "compression_ratio",
            "latency_ms", "baseline_latency_ms", "threads", "constraints", "artifact_sha256")
    record = {k: metrics[k] for k in keys}
    record.update({k: metrics[k] for k in ("val_value", "baseline_val_value", "val_constraints") if k in metrics})
    record.update(number=number, speedup_batch_64=metrics["latency_ratio_batch_64"],
                  speedup_batch_1=speedup(metrics, "batch_1"),
                  violations=violations(metrics), brief=describe(params), params=params, recipe=recipe,
                  busy=timing_caveat(metrics) is not None)
    return record


def _outcome(attrs: dict[str, Any]) -> Optional[dict[str, Any]]:
    """What an ended candidate left in its trial's user attributes: its record when it finished, the stop's
    details when it was stopped early, else None."""
    return attrs.get("record") or attrs.get("stopped")


def _constraints_func(trial: Any) -> list[float]:
    """Optuna's feasibility: one value per constraint, <= 0 when met (same order for every trial)."""
    record = _outcome(trial.user_attrs)
    if record is None and "same_as" in trial.user_attrs:
        earlier = trial.study.trials[trial.user_attrs["same_as"]] if hasattr(trial, "study") else None
        record = earlier and _outcome(earlier.user_attrs)
    if record is None:
        return [1.0]
    told = sampler_violations(record)
    return [told[k] for k in sorted(told)]


class CandidateStopped(Exception):
    """Raised after an intermediate stage whose validation metric leaves the candidate no hope of feasibility."""

    def __init__(self, info: dict[str, Any]):
        super().__init__(stopped_text(info))
        self.info = info


def _same_as(trials: list[Any], t: Any) -> Optional[dict[str, Any]]:
    """For a trial that repeated an earlier candidate: ``{"number", "brief", "allots"}``: the number of the one it
    repeated, the candidate in brief, and whether it repeats by what its sensitivity analysis allots."""
    number = t.user_attrs.get("same_as")
    if number is None:
        return None
    earlier = trials[number].user_attrs
    done = _outcome(earlier) or {}
    return {"number": number, "brief": t.user_attrs.get("brief", done.get("brief", "")),
            "allots": bool(t.user_attrs.get("allots"))}


def _reruns(trials: list[Any]) -> dict[int, int]:
    """Trial number → the number of the trial that runs its interrupted candidate again."""
    return {t.user_attrs["rerun_of"]: t.number for t in trials if "rerun_of" in t.user_attrs}


def _failure(reruns: dict[int, int], t: Any) -> Optional[str]:
    """Why a failed trial failed, for trials.csv: its error, or the interruption its candidate runs again after."""
    rerun = reruns.get(t.number)
    if INTERRUPTED not in t.user_attrs and rerun is None:
        return t.user_attrs.get("error")
    why = t.user_attrs.get(INTERRUPTED, "its process stopped")
    return f"interrupted ({why}); " + ("the same command runs its candidate again" if rerun is None
                                       else f"its candidate runs again as trial {rerun}")


def _compression(params: dict[str, Any]) -> str:
    """A candidate's parameters but its fine-tuning budget: how it compresses the model."""
    return json.dumps({k: v for k, v in params.items() if k != "epochs"}, sort_keys=True)


@contextmanager
def _locked(out: Path, name: str = ".auto.lock") -> Iterator[None]:
    """One writer of the outputs at a time among the processes sharing ``out`` (of a folder in it, with another
    lock file ``name``)."""
    with open(out / name, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class SearchResult:
    best: Optional[dict[str, Any]]
    records: list[dict[str, Any]]
    feasible: bool
    infeasible: str  # each constraint the best fails, its limit and the closest value reached ("" if feasible)
    trials: int  # finished candidates in the study
    warnings: list[str] = dataclasses.field(default_factory=list)  # what the user should know about the result


@dataclass
class AutoSearch:
    """One process's part of a search (several processes, even on several machines, may share a study).

    Args:
        domain: the validated domain, with constraints.
        out: the output folder (``trials/N/`` per candidate, ``best/``, ``best_recipe.yaml``, ``trials.csv``,
            ``report.html``; and ``study.db`` with the default storage).
        trials: the study ends when it holds this many finished candidates (the same command resumes a stopped
            search and ends with the same count).
        timeout: seconds after which this process starts no new candidate or cross-validation (None: no limit);
            candidates stop early enough to leave time for cross-validating the best.
        folds: the best candidate's recipe is run again on this many cross-validation folds of the training and
            validation samples before the search trusts its drop (``search.crossval``); 0: never.
    """

    domain: Domain
    out: Path
    trials: int = 20
    timeout: Optional[float] = None
    storage: Optional[str] = None
    study_name: Optional[str] = None
    objective: str = "size"
    threads: int = 1
    seed: int = 0
    folds: int = 3
    settings: SearchSettings = SearchSettings()
    log: Callable[[str], None] = lambda _m: None
    baseline: Optional[Path] = None  # the trained baseline's checkpoint every candidate resumes from (set by run)
    _baseline_val: Optional[float] = dataclasses.field(default=None, init=False, repr=False)  # its val metric
    _baseline_correct: Any = dataclasses.field(default=None, init=False, repr=False)  # split → (N,) bool
    _val: Any = dataclasses.field(default=None, init=False, repr=False)  # the validation split
    _train: Any = dataclasses.field(default=None, init=False, repr=False)  # training inputs the losses count on
    _splits: Any = dataclasses.field(default=None, init=False, repr=False)  # the standard splits (folds are cut from)
    # fold → its validation part, and whether its baseline gets each sample right
    _folds_val: dict[int, Any] = dataclasses.field(default_factory=dict, init=False, repr=False)
    _any_finished: bool = dataclasses.field(default=False, init=False, repr=False)  # some candidate has finished
    _num_classes: int = dataclasses.field(default=0, init=False, repr=False)
    _data_warnings: list[str] = dataclasses.field(default_factory=list, init=False, repr=False)  # from check()
    # trials cross-validation had no time left for, as logged
    _cv_untimely: set[int] = dataclasses.field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError("--trials", f"must be a positive integer, got {self.trials!r}")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError("--timeout", f"must be a positive number of seconds, got {self.timeout!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError("--objective", f"must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.threads < 1:
            raise ConfigError("--threads", f"must be a positive integer, got {self.threads!r}")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 0 or self.folds == 1 \
                or self.folds > 20:
            raise ConfigError("--folds", f"must be 0 (no cross-validation) or 2 to 20, got {self.folds!r}")
        check_domain(self.domain)
        if self.storage is not None:
            check_storage_url(self.storage)
        self.study_name = self.study_name or f"auto-{self.domain.name}"

    def check(self) -> None:
        """Everything that can be checked without training: the baseline's data and model fit the domain."""
        from torchslim.recipe import Recipe, Stage
        from torchslim.runner import prepare
        from torchslim.stages import STAGES

        first = recipe_from_params({"epochs": 1}, self.domain, domain_ref(self.domain), self.settings, self.seed)
        body = first["stages"][0]["train"]
        stage = Stage("train", STAGES["train"].parse(body, prefix="stages[0].train", source=None), 0)
        said: list[str] = []
        ctx = prepare(Recipe(self.domain, self.seed, (stage,), first, None, self.domain.base_dir), log=said.append)
        # What run would warn of (the data, the model's outputs): said now, and again with the result
        self._data_warnings = [m.removeprefix("warning: ") for m in said if m.startswith("warning: ")]
        for warning in self._data_warnings:
            self.log(f"warning: {warning}")
        self.settings = settings_for_data(self.settings, tuple(ctx.splits.input_shape))
        self._val, self._num_classes, self._splits = ctx.splits.val, ctx.splits.num_classes, ctx.splits
        self._train = training_sample(ctx.splits.train)

    def _check_out_holds_this_study(self) -> None:
        """``DIR/trials/N``, ``best`` and ``trials.csv`` belong to one study: a search under another study name in
        the same folder would write over them (as it would over a run's report)."""
        marker = self.out / STUDY_MARKER
        if not marker.is_file():
            if (self.out / "metrics.json").exists():  # a run's report.html would be replaced by the search's
                raise ConfigError("--out", f"{self.out} holds a run (metrics.json): search into another --out")
            return
        try:
            held = json.loads(marker.read_text()).get("study")
        except (ValueError, OSError, AttributeError):
            raise ConfigError("--out", f"{marker}: not a study record this tool wrote; search into another --out") \
                from None
        if held != self.study_name:
            raise ConfigError("--study", f"{self.out} holds the search of study {held!r}: resume it with --study "
                                         f"{held}, or search study {self.study_name!r} into another --out")

    def open_study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self._check_out_holds_this_study()
        if self.storage is None:  # the default SQLite file lives in the output folder
            self.out.mkdir(parents=True, exist_ok=True)
            storage = open_storage(default_storage(self.out), self._rerun_stale)
        else:
            storage = open_storage(self.storage, self._rerun_stale)
            self.out.mkdir(parents=True, exist_ok=True)
        identity = {"domain": self.domain.to_dict(), "seed": self.seed, "settings": dataclasses.asdict(self.settings)}
        existing = optuna.study.get_all_study_summaries(storage)
        known = next((s for s in existing if s.study_name == self.study_name), None)
        recorded = known.user_attrs.get("identity") if known is not None else None
        if recorded not in (None, identity):
            raise ConfigError("--study", f"study {self.study_name!r} in this storage searched with "
                                         f"{_identity_changes(recorded, identity)}: give the same to resume it, or "
                                         f"search into another --out" + (" under another --study" if self.storage
                                                                          else ""))
        # Each trial's sampler is seeded by --seed plus the trial's number, so that a resumed or second process
        # does not propose another's candidates again. Optuna 5 records feasibility on the trial
        # (set_constraint); earlier versions ask a constraints_func.
        feasibility = {} if hasattr(optuna.trial.Trial, "set_constraint") else {"constraints_func": _constraints_func}
        sampler = starting_points_first(lambda number: tpe(self.seed + number, **feasibility),
                                        starting_points(self.domain, self.settings))
        study = optuna.create_study(storage=storage, study_name=self.study_name, directions=list(DIRECTIONS),
                                    sampler=sampler, load_if_exists=True)
        if known is None:
            study.set_user_attr("identity", identity)
        if not (self.out / STUDY_MARKER).is_file():
            write_bytes_atomic(self.out / STUDY_MARKER, json.dumps({"study": self.study_name}).encode())
        self._requeue_interrupted(study, storage)
        return study

    def _requeue_interrupted(self, study: Any, storage: Any) -> None:
        """A candidate that did not finish because its process stopped runs again, once: one interrupted in its
        process (Ctrl-C: Optuna records it failed, ``objective_fn`` marks it), or whose process died on this host
        (SIGKILL, power loss: still recorded running; marked and failed here)."""
        from optuna.trial import TrialState

        host = socket.gethostname()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = t.user_attrs.get("pid")
            if t.user_attrs.get("host") == host and isinstance(pid, int) and not process_alive(pid):
                # FrozenTrial has no public id; the storage needs it to change the trial
                storage.set_trial_user_attr(t._trial_id, INTERRUPTED, f"process {pid} is gone")
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if INTERRUPTED in t.user_attrs:
                self._run_again(study, t, t.user_attrs[INTERRUPTED])

    def _rerun_stale(self, study: Any, trial: Any) -> None:
        """A candidate whose process stopped recording heartbeats (see ``storage.STALE_AFTER_S``), on any host: Optuna
        has marked it failed."""
        self._run_again(study, trial, f"no heartbeat from its process on {trial.user_attrs.get('host', 'its host')}")

    def _run_again(self, study: Any, trial: Any, why: str) -> None:
        """Enqueue an interrupted trial's candidate, with its parameters, unless that was done already."""
        if trial.number in _reruns(study.get_trials(deepcopy=False)):
            return
        study.enqueue_trial(dict(trial.params), user_attrs={"rerun_of": trial.number})
        self.log(f"trial {trial.number}: interrupted ({why}); its candidate runs again")

    def objective_fn(self, trial: Any) -> tuple[float, float, float]:
        try:
            return self._candidate(trial)
        except KeyboardInterrupt:  # Optuna records the trial failed; the same command runs its candidate again
            trial.set_user_attr(INTERRUPTED, "stopped by Ctrl-C")
            raise

    def _candidate(self, trial: Any) -> tuple[float, float, float]:
        from torchslim.recipe import load_recipe
        from torchslim.runner import run_recipe

        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = suggest_params(trial, self.domain, self.settings)
        trial.set_user_attr("brief", describe(params))  # what trials.csv names it by, even if its process dies
        earlier = self._same_candidate(trial, params)
        if earlier is not None:
            return self._repeat(trial, earlier, params)
        recipe = recipe_from_params(params, self.domain, domain_ref(self.domain), self.settings, self.seed)
        folder = self.out / "trials" / str(trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "recipe.yaml").write_text(recipe_yaml(recipe))
        start = time.monotonic()
        stage_records: list[dict[str, Any]] = []  # for the sensitivity tables its pruning stages measure
        stop_rule = self._stop_rule(trial.study, params, recipe)

        def after_stage(ctx: Any, record: dict[str, Any]) -> None:
            stage_records.append(record)
            stop_rule(ctx, record)

        try:
            # the recipe's first stages, shared with other candidates (the baseline, a student), are done: the
            # run resumes after them
            start_from_baseline(self.ensure_shared(params), folder)
            metrics = run_recipe(load_recipe(folder / "recipe.yaml"), folder, resume=True, threads=self.threads,
                                 log=lambda _m: None, after_stage=after_stage)
        except CandidateStopped as stop:
            import optuna

            self._keep_tables(trial, params, stage_records)
            info = {**stop.info, "seconds": round(time.monotonic() - start, 1)}
            trial.set_user_attr("stopped", info)
            # Infeasible by what it is known to violate: the sampler ranks it with the infeasible candidates
            # (a stopped trial without constraints would count as feasible, and be sampled around).
            if hasattr(trial, "set_constraint"):
                for name, value in sorted(info["violations"].items()):
                    trial.set_constraint(name, value)
            raise optuna.TrialPruned(str(stop)) from None
        except Exception as exc:
            trial.set_user_attr("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self.log(f"trial {trial.number}: {trial.user_attrs['brief']}: failed: {trial.user_attrs['error']}")
            raise
        self._keep_tables(trial, params, stage_records)
        record = record_of(trial.number, metrics, params, recipe)
        record["stage_values"] = recovery.stage_values(stage_records)  # what its later stages won back
        # feasible as measured (as run reports it); preferred, and told the sampler, with the drop's margin: its
        # standard error on the validation split times --drop-margin; preferred first when its losses alone, on the
        # validation split and on the training inputs, are within the limit by their margin (see search.noise,
        # feasibility.choose_best)
        counts = self.losses_and_gains(folder / "artifact")
        stderr = counts_stderr(*counts["val"]) if counts else 0.0
        if "val_constraints" in metrics:
            record["margin_constraints"] = with_margin(metrics["val_constraints"], self.settings.drop_margin * stderr)
            record["margin_violations"] = violations({**metrics, "val_constraints": record["margin_constraints"]})
            if counts and self.settings.drop_margin > 0:
                bound = max(losses_bound(losses, n, self.settings.drop_margin) for losses, _, n in counts.values())
                record["loss_constraints"] = on_losses(metrics["val_constraints"], metrics["baseline_val_value"],
                                                       bound)
        if counts:
            record["val_losses"], record["val_gains"] = counts["val"][:2]
            record["train_losses"], record["train_samples"] = counts["train"][0], counts["train"][2]
        record["val_drop_stderr"] = stderr
        record["seconds"] = round(time.monotonic() - start, 1)
        trial.set_user_attr("record", record)
        if hasattr(trial, "set_constraint"):
            for name, value in sorted(sampler_violations(record).items()):
                trial.set_constraint(name, value)
        return record.get("val_value", record["value"]), float(record["size_bytes"]), record["speedup_batch_64"]

    def losses_and_gains(self, artifact: Path) -> dict[str, tuple[int, int, int]]:
        """``{"val": (losses, gains, n), "train": ...}``: the artifact against the baseline on the validation split
        and on up to :data:`search.noise.TRAIN_SAMPLES` training inputs (see :func:`search.noise.paired_counts`),
        each run where the run measured it (the baseline in torch, the artifact in the domain's runtime); empty for
        a metric that is not a per-sample hit rate."""
        if not self._per_sample():
            return {}
        splits = {"val": self._val, "train": self._train}
        if self._baseline_correct is None:
            self._baseline_correct = self._answers(self.ensure_baseline() / "current", splits, runtime=False)
        candidate = self._answers(artifact, splits, runtime=True)
        return {k: (*paired_counts(self._baseline_correct[k], candidate[k]), len(candidate[k])) for k in splits}

    def _per_sample(self) -> bool:
        """Whether the metric is a per-sample hit rate, whose losses and gains can be counted (after check())."""
        return self.domain.metric in ("accuracy", "top5") and self._val is not None

    def _answers(self, artifact: Path, data: dict[str, Any], runtime: bool) -> dict[str, torch.Tensor]:
        """Whether the model saved in ``artifact`` gets each sample of each dataset right: run in the domain's
        runtime (a candidate, as its run measured it), else in torch (a baseline)."""
        from torchslim.artifact import load_artifact
        from torchslim.export.measure import runtime_predict

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            model, manifest = load_artifact(artifact, trust_code=True, code_dir=self.domain.base_dir)
            predict = runtime_predict(model, manifest, self.domain.runtime) if runtime else model
            return {k: correct_per_sample(predict, d, self.domain.metric) for k, d in data.items()}
        finally:
            torch.set_num_threads(before)

    def cross_validate(self, study: Any, record: dict[str, Any]) -> dict[str, Any]:
        """Run ``record``'s recipe on each of the :attr:`folds` cross-validation folds (a baseline trained per fold,
        shared as the search's own is) and judge its drop summed over them (``search.crossval.judge``); kept in the
        study, so that another process, or this search resumed, does not run it again. A fold's run lives in
        ``trials/N/folds/I/`` (``torchslim run trials/N/recipe.yaml --set 'domain.data.fold={index: I, of: K}'``
        reproduces it)."""
        from torchslim.data import fold_splits
        from torchslim.recipe import load_recipe
        from torchslim.runner import run_recipe

        number = record["number"]
        folder = self.out / "trials" / str(number)
        with _locked(folder, ".cv.lock"):  # a second process waits for the first's figures
            done = study.user_attrs.get(f"{CV_ATTR}{number}")
            if done is not None:
                return done
            counts = []
            for index in range(self.folds):
                run = folder / "folds" / str(index)
                if not (run / "metrics.json").is_file():  # else finished before an interruption: the same result
                    start_from_baseline(self.ensure_shared(record["params"], index), run)
                    run_recipe(load_recipe(folder / "recipe.yaml", self._fold(index)[1]), run, resume=True,
                               threads=self.threads, log=lambda _m: None)
                if index not in self._folds_val:  # the fold's validation part, and its baseline's answers
                    data = {"val": fold_splits(self._splits, index, self.folds, self.domain.data.seed).val}
                    self._folds_val[index] = data, self._answers(self.ensure_baseline(index) / "current", data,
                                                                 runtime=False)["val"]
                data, baseline = self._folds_val[index]
                candidate = self._answers(run / "artifact", data, runtime=True)["val"]
                counts.append((*paired_counts(baseline, candidate), len(candidate)))
            result = judge(counts, self.settings.drop_margin, record["val_constraints"], record["baseline_val_value"])
            study.set_user_attr(f"{CV_ATTR}{number}", result)
        return result

    def _can_cross_validate(self, record: dict[str, Any]) -> bool:
        """Whether cross-validation can judge ``record``: a feasible candidate of a domain whose metric is
        constrained (else there is no drop to check) and counted per sample."""
        constrained = any(getattr(self.domain.constraints, name) is not None for name in METRIC_CONSTRAINTS)
        return (self.folds > 0 and constrained and self._per_sample() and "val_constraints" in record
                and is_feasible(record))

    def _cv_cost(self, record: dict[str, Any]) -> tuple[float, float]:
        """About how long cross-validating candidates like ``record`` takes, in seconds: once, on each fold, its
        shared stages (baseline, student) where that fold has not run them yet; and per candidate, the rest of its
        recipe on every fold (each as long as on the standard split, whose training set is larger)."""
        unready = sum(not self._shared_ready(record["params"], fold) for fold in range(self.folds))
        chain = sum(shared_seconds(p) or 0.0 for p in self._shared_chain(record["params"])) if unready else 0.0
        return unready * chain, self.folds * record.get("seconds", 0.0)

    def _cross_validate_best(self, study: Any, deadline: Optional[float]) -> int:
        """Cross-validate candidates in the search's order of preference (``feasibility.preference_tiers``) until
        one's drop holds, :data:`CV_MOST` have run, or ``deadline`` (``time.monotonic()``) would pass. A candidate
        that compresses the model as one that did not hold does (the same parameters but its fine-tuning budget) is
        judged as that one was, without running: on digits, six candidates alike but for their fine-tuning (14 to
        19 epochs) all did not hold. Returns how many candidates did not hold."""
        refuted, ran = 0, 0
        failed: dict[str, dict[str, Any]] = {}  # a compression that did not hold → its verdict
        for record in self._in_cv_order(self._with_artifacts(study)):
            result = record.get("cv")
            twin = failed.get(_compression(record["params"]))
            if result is None and twin is not None:
                result = twin
                study.set_user_attr(f"{CV_ATTR}{record['number']}", result)
            elif result is None:
                if ran == CV_MOST:
                    self.log(f"cross-validation: {ran} candidates did not hold; no more are tried")
                    return refuted
                needed = sum(self._cv_cost(record)) if deadline is not None else 0.0
                if deadline is not None and time.monotonic() + needed > deadline:
                    if record["number"] not in self._cv_untimely:  # said once: the search's end asks again
                        self._cv_untimely.add(record["number"])
                        self.log(f"cross-validation: no time left to run trial {record['number']} on {self.folds} "
                                 f"folds (about {needed:.0f}s)")
                    return refuted
                begin = time.monotonic()
                result = self.cross_validate(study, record)
                ran += 1
                self.log(f"cross-validation: trial {record['number']} ({record['brief']}) {cv_text(result)}: "
                         + ("holds" if result["met"] else f"{', '.join(result['failed'])} not met")
                         + f" | {time.monotonic() - begin:.0f}s")
                self.write(study)
            if result["met"]:
                return refuted
            refuted += 1
            failed.setdefault(_compression(record["params"]), {**result, "like": result.get("like", record["number"])})
        return refuted

    def _keep_tables(self, trial: Any, params: dict[str, Any], stage_records: list[dict[str, Any]]) -> None:
        """Keep the sensitivity tables the candidate's pruning stages measured, for :meth:`_same_candidate`."""
        tables = allocation.measured_tables(params, stage_records, self.threads)
        if tables:
            trial.set_user_attr("sensitivity", allocation.to_attr(tables))

    def _same_candidate(self, trial: Any, params: dict[str, Any]) -> Any:
        """An ended trial of the study whose result is this candidate's, if any (the sampler proposes a categorical
        point again often): one with exactly these parameters (its recipe and seed are this candidate's), or one
        whose pruning stages' sensitivity analysis, as the study's measured tables tell, allots the same
        sparsities and whose other parameters are these (``search.allocation``)."""
        from optuna.trial import TrialState

        ended = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                 if t.number != trial.number and _outcome(t.user_attrs) is not None]
        for t in ended:
            if _outcome(t.user_attrs)["params"] == params:
                return t
        if params.get("allocation") != "sensitivity":
            return None
        tables: dict[str, allocation.Table] = {}
        for t in ended:
            allocation.merge(tables, allocation.from_attr(t.user_attrs.get("sensitivity", {})))
        bound = sensitivity_bound(self.domain)
        mine = allocation.identity(params, tables, bound, self.threads)
        if mine is None:
            return None
        return next((t for t in ended
                     if allocation.identity(_outcome(t.user_attrs)["params"], tables, bound, self.threads) == mine),
                    None)

    def _repeat(self, trial: Any, earlier: Any, params: dict[str, Any]) -> tuple[float, float, float]:
        """End ``trial`` as ``earlier`` ended, without running it: the same values or the same stop, and the same
        constraint values for the sampler."""
        import optuna

        trial.set_user_attr("same_as", earlier.number)
        done = _outcome(earlier.user_attrs)
        if done["params"] != params:  # the same allotted sparsities
            trial.set_user_attr("allots", True)
        if hasattr(trial, "set_constraint"):
            for name, value in sorted(sampler_violations(done).items()):
                trial.set_constraint(name, value)
        if "record" not in earlier.user_attrs:
            raise optuna.TrialPruned(f"same candidate as trial {earlier.number}")
        return tuple(earlier.values)

    def _stop_rule(self, study: Any, params: dict[str, Any],
                   recipe: dict[str, Any]) -> Callable[[Any, dict[str, Any]], None]:
        """The check after each of a candidate's stages but its last: stop it when its validation metric (measured
        on the stage's saved model) is below :func:`feasibility.stop_floor` less what the stages it has still to
        run won back in the study's finished candidates (``search.recovery``), once some candidate of the study has
        finished: until then none is stopped, so that a search always has a model to save as ``best``."""

        def check(ctx: Any, record: dict[str, Any]) -> None:
            value = record.get("artifact_val_metric")
            if value is None or record["index"] >= len(recipe["stages"]) - 1 or ctx.baseline is None:
                return
            if not self._any_finished:
                self._any_finished = any((self.out / "trials" / str(r["number"]) / "artifact").is_dir()
                                         for r in self.finished(study))
                if not self._any_finished:
                    return
            if self._baseline_val is None:  # the same figure the finished run reports as baseline_val_value
                self._baseline_val = ctx.validate(ctx.baseline)
                ctx.baseline.cpu()
            floor = stop_floor(self.domain.constraints.model_dump(), self._baseline_val, self.settings.stop_slack)
            if floor is None or value >= floor:
                return
            won_back = recovery.recovery(self.finished(study), recovery.tail(recipe, record["index"]))
            if value < floor - won_back:
                known = metric_violations(self.domain.constraints.model_dump(), self._baseline_val, value)
                raise CandidateStopped({"stage": record["index"], "stage_name": record["stage"], "val_value": value,
                                        "baseline_val_value": self._baseline_val, "floor": floor - won_back,
                                        "won_back": won_back, "violations": known, "brief": describe(params),
                                        "params": params})

        return check

    def _fold(self, fold: Optional[int]) -> tuple[Domain, tuple[str, ...]]:
        """The domain a cross-validation fold's runs see, and the ``--set`` that makes a recipe run on it; for
        None, the search's own."""
        if fold is None:
            return self.domain, ()
        from torchslim.domain import Fold

        data = self.domain.data.model_copy(update={"fold": Fold(index=fold, of=self.folds)})
        return self.domain.model_copy(update={"data": data}), (fold_override(fold, self.folds),)

    def _shared_recipe(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """A recipe whose first stages are those ``params``' candidate shares with others, and how many."""
        return (recipe_from_params({**params, "epochs": 1}, self.domain, domain_ref(self.domain), self.settings,
                                   self.seed), shared_stages(params))

    def _shared_chain(self, params: dict[str, Any]) -> list[Path]:
        """The search's own shared checkpoints the candidate resumes from: the baseline's, and a student's."""
        return [self.ensure_baseline()] + ([self.ensure_shared(params)] if shared_stages(params) > 1 else [])

    def _shared_ready(self, params: dict[str, Any], fold: Optional[int]) -> bool:
        from torchslim.search.baseline import baseline_folder, baseline_identity, find_baseline

        recipe, count = self._shared_recipe(params)
        identity = baseline_identity(self._fold(fold)[0], recipe, self.threads, count)
        return find_baseline(baseline_folder(self.out, identity), identity)

    def ensure_shared(self, params: dict[str, Any], fold: Optional[int] = None) -> Path:
        """The checkpoint after the stages the candidate shares with others (see :func:`space.shared_stages`):
        the baseline's, or a student's distilled once per width from it; on a cross-validation ``fold``, that
        fold's."""
        baseline = self.ensure_baseline(fold)
        recipe, count = self._shared_recipe(params)
        if count == 1:
            return baseline
        domain, overrides = self._fold(fold)
        where = "" if fold is None else f"fold {fold + 1} of {self.folds}: "
        return ensure_baseline(domain, recipe, self.out, self.threads, lambda: _locked(self.out), self.log,
                               count=count, start=baseline, label=f"{where}student w{params['width']:g}",
                               overrides=overrides)

    def ensure_baseline(self, fold: Optional[int] = None) -> Path:
        """The baseline, trained once for this search's domain, seed, training settings and thread count (on a
        cross-validation ``fold``, once for that fold)."""
        if fold is None and self.baseline is not None:
            return self.baseline
        domain, overrides = self._fold(fold)
        first = recipe_from_params({"epochs": 1}, self.domain, domain_ref(self.domain), self.settings, self.seed)
        checkpoint = ensure_baseline(domain, first, self.out, self.threads, lambda: _locked(self.out), self.log,
                                     label="baseline" if fold is None else f"fold {fold + 1} of {self.folds}: "
                                                                           f"baseline", overrides=overrides)
        if fold is None:
            self.baseline = checkpoint
        return checkpoint

    def finished(self, study: Any) -> list[dict[str, Any]]:
        from optuna.trial import TrialState

        checked = study.user_attrs  # cross-validations (search.crossval), by trial number
        return [{**t.user_attrs["record"], **({"cv": checked[f"{CV_ATTR}{t.number}"]}
                                             if f"{CV_ATTR}{t.number}" in checked else {})}
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "record" in t.user_attrs]

    def _with_artifacts(self, study: Any) -> list[dict[str, Any]]:
        """The finished candidates whose artifacts are in this output folder (a process sharing the study but
        not the folder keeps its own): those ``best`` is chosen from."""
        return [r for r in self.finished(study) if self._has_artifact(r)]

    def _has_artifact(self, record: dict[str, Any]) -> bool:
        return (self.out / "trials" / str(record["number"]) / "artifact").is_dir()

    def write(self, study: Any) -> Optional[dict[str, Any]]:
        """Rewrite the outputs from every finished candidate of the study (all processes'), under a lock: the
        study is read inside it, so a slower process never puts back an older choice."""
        with _locked(self.out):
            return self._write(study)

    def _write(self, study: Any) -> Optional[dict[str, Any]]:
        from optuna.trial import TrialState

        finished = {r["number"]: r for r in self.finished(study)}
        records = [r for r in finished.values() if self._has_artifact(r)]
        best = choose_best(records, self.objective)
        trials = study.get_trials(deepcopy=False)
        reruns = _reruns(trials)
        rows = [csv_row(t.number, t.state.name, finished.get(t.number), t.user_attrs.get("stopped"),
                        _same_as(trials, t), _failure(reruns, t), t.user_attrs.get("brief"))
                for t in trials if t.state != TrialState.WAITING]  # a queued rerun is not a candidate yet
        if best is None:  # no candidate finished (each was stopped or failed): only the table says why
            if rows:
                write_bytes_atomic(self.out / "trials.csv", trials_csv(rows).encode())
            return None
        feasible = sum(is_feasible(r) for r in records)
        stopped = sum("stopped" in t.user_attrs for t in trials)
        summary = (f"{len(records)} candidates finished, {feasible} feasible, {stopped} stopped early; best for "
                   f"{self.objective}: trial {best['number']} ({best['brief']}), {best['metric']} "
                   f"{best['value']:.4f} (baseline {best['baseline_value']:.4f}), {best['size_bytes']:,} bytes, "
                   f"speed-up at batch 64 {best['speedup_batch_64']:.2f}x"
                   + ("" if is_feasible(best) else ", closest to the constraints (none is feasible)"))
        write_outputs(self.out, records, rows, best, f"torchslim auto: {self.domain.name}", summary)
        return best

    def progress(self, record: dict[str, Any], best: dict[str, Any]) -> str:
        failed = ", ".join(k for k, v in record["violations"].items() if v > 0)
        short = "" if failed else short_of_preference(record)
        ok = f"infeasible ({failed})" if failed else f"feasible ({short})" if short else "feasible"
        judged = f"val {record['val_value']:.4f}, test " if "val_value" in record else ""  # val decides
        busy = " (timed on a busy machine or unsteadily)" if record.get("busy") else ""
        return (f"trial {record['number']}: {record['brief']} | {record['metric']} {judged}{record['value']:.4f} | "
                f"{record['size_bytes']:,} B | speed-up b64 {record['speedup_batch_64']:.2f}x{busy} | {ok} | "
                f"{record['seconds']:.0f}s | best: trial {best['number']} ({best['size_bytes']:,} B, "
                f"{best['value']:.4f}{'' if is_feasible(best) else ', infeasible'})")

    def stopped_line(self, info: dict[str, Any], number: int, best: Optional[dict[str, Any]]) -> str:
        tail = "" if best is None else (f" | best: trial {best['number']} ({best['size_bytes']:,} B, "
                                        f"{best['value']:.4f}{'' if is_feasible(best) else ', infeasible'})")
        return (f"trial {number}: {info['brief']} | stopped {stopped_text(info)} | {info['seconds']:.0f}s" + tail)

    def run(self) -> SearchResult:
        """Run candidates until the study holds ``trials`` ended ones, finished or stopped early (or ``timeout``
        passes)."""
        from optuna.trial import TrialState

        self.check()
        study = self.open_study()
        start = time.monotonic()
        failures = 0
        reserve = 0.0  # seconds kept at the end of --timeout for cross-validating the best
        while True:
            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
            if done >= self.trials or failures >= self.trials:
                break
            if self.timeout is not None and time.monotonic() - start >= self.timeout - reserve:
                if reserve > 0:  # the time kept for cross-validation has come: candidates go on if it leaves some
                    self._cross_validate_best(study, start + self.timeout)
                    reserve = self._cv_reserve(self._with_artifacts(study), self.timeout - (time.monotonic() - start))
                    if time.monotonic() - start < self.timeout - reserve:
                        continue
                self.log(f"timeout: {self.timeout:g}s; no new candidate is started")
                break
            self.ensure_baseline()  # before the first candidate: a baseline that cannot be trained stops the search
            ended = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
            before = {t.number for t in study.get_trials(deepcopy=False, states=ended)}
            study.optimize(self.objective_fn, n_trials=1, catch=(Exception,))
            mine = [t for t in study.get_trials(deepcopy=False, states=ended) if t.number not in before
                    and t.user_attrs.get("pid") == os.getpid()]
            if any(t.state == TrialState.FAIL for t in mine):
                failures += 1
            best = self.write(study)
            left = math.inf if self.timeout is None else self.timeout - (time.monotonic() - start)
            reserve = self._cv_reserve(self._with_artifacts(study), left)
            for t in mine:
                if "record" in t.user_attrs and best is not None:
                    self.log(self.progress(t.user_attrs["record"], best))
                elif "stopped" in t.user_attrs:
                    self.log(self.stopped_line(t.user_attrs["stopped"], t.number, best))
                elif "same_as" in t.user_attrs:
                    same = _same_as(study.get_trials(deepcopy=False), t) or {}
                    why = ", its sensitivity analysis allots the same sparsities" if same.get("allots") else ""
                    self.log(f"trial {t.number}: {same.get('brief', '')} | the same candidate as trial "
                             f"{t.user_attrs['same_as']}{why}: its result, not run again")
        self._cross_validate_best(study, None if self.timeout is None else start + self.timeout)
        records = self.finished(study)
        best = self.write(study)
        feasible = best is not None and is_feasible(best)
        line = "" if best is None or feasible else infeasible_line(best, records)
        warnings = (self._data_warnings + baseline_at_chance(self.domain, self._num_classes, best)
                    + baseline_surpassed(self.domain, records) + folds_from_given_weights(self.domain, records))
        if best is not None:
            unconfirmed = unconfirmed_line(best, None if self._val is None else len(self._val), str(self.out / "best"))
            warnings += [unconfirmed] if unconfirmed else []
            tried = sum(is_refuted(r) and "like" not in r["cv"] for r in records)
            cv = cv_warning(best, self.folds, tried) if self._can_cross_validate(best) else None
            warnings += [cv] if cv else []
        return SearchResult(best, records, feasible, line, len(records), warnings)

    def _cv_reserve(self, records: list[dict[str, Any]], left: float) -> float:
        """Seconds to keep at the end of the timeout for cross-validation: a few candidates' worth (the first may
        not hold) like the first it would try, at most a third of the timeout; none when no candidate needs it, or
        when the first one's alone would not fit in that third or in the ``left`` seconds before the timeout (time
        kept that no cross-validation can use is left to candidates: on a busy machine, the folds' baselines and
        students can take longer than a third of the timeout)."""
        first = self._first_unchecked(records)
        if self.timeout is None or first is None:
            return 0.0
        shared, each = self._cv_cost(first)
        if shared + each > min(self.timeout / 3, left):
            return 0.0
        return min(shared + CV_PLANNED * each, self.timeout / 3)

    def _first_unchecked(self, records: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
        """The candidate cross-validation would try first (see :meth:`_cross_validate_best`): in order of
        preference, the first not yet cross-validated; None when one whose drop held comes before it, or none is
        left."""
        for record in self._in_cv_order(records):
            if "cv" not in record:
                return record
            if record["cv"]["met"]:
                return None
        return None

    def _in_cv_order(self, records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The candidates cross-validation may judge, in the order it tries them: the search's preference."""
        for tier in preference_tiers(records, self.objective):
            yield from (r for r in tier if self._can_cross_validate(r))


def run_auto(domain: Domain, out: str | Path, **kwargs: Any) -> SearchResult:
    """Search compressions of ``domain``'s model that meet its constraints; see :class:`AutoSearch`.

    Example:
        >>> from torchslim.domain import load_domain
        >>> result = run_auto(load_domain("domains/digits.yaml"), "runs/auto", trials=3)  # doctest: +SKIP
        >>> result.best["size_bytes"], result.feasible  # doctest: +SKIP
    """
    return AutoSearch(domain, Path(out), **kwargs).run()


__all__ = ["AutoSearch", "SearchResult", "default_storage", "open_storage", "run_auto"]
