"""The stages candidates share, run once per search: the baseline's training, and a student's distillation.

A candidate recipe's first stage trains the baseline; with the same domain, seed, stage and thread count every
candidate would train the same weights, so most of a search's time went into training them again. The same holds
for a distilled student: every candidate of one width distils the same student from the same baseline. The first
process that needs such a prefix of stages runs it, under the output folder's lock, and leaves in
``OUT/baseline/KEY/`` the runner's checkpoint after it (``KEY`` hashes what the weights depend on, recorded beside
it in ``identity.json``). A candidate resumes its own recipe from a copy of the longest such checkpoint: its recipe,
its stage seeds, its records and its artifact are those of a run that ran every stage itself, so the recipe
reproduces it with ``torchslim run`` from scratch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from torchslim.domain import Domain
from torchslim.search.outputs import recipe_yaml

BASELINE_DIR = "baseline"
CHECKPOINT = "checkpoint"  # the runner's work folder after the shared stages
IDENTITY = "identity.json"
SECONDS = "seconds"  # how long the stages took: what a search plans its cross-validation's time by


def baseline_identity(domain: Domain, recipe: dict[str, Any], threads: int, count: int = 1) -> dict[str, Any]:
    """What the weights after the first ``count`` stages depend on: the domain, the seed, those stages and the
    thread count (float sums in another order give other bits)."""
    identity = {"domain": domain.to_dict(), "seed": recipe["seed"], "stage": recipe["stages"][0], "threads": threads}
    if count > 1:
        identity["stages"] = recipe["stages"][:count]
    return identity


def baseline_folder(out: Path, identity: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return out / BASELINE_DIR / key


def find_baseline(folder: Path, identity: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished checkpoint made with exactly ``identity``."""
    try:
        return json.loads((folder / IDENTITY).read_text()) == identity and (folder / CHECKPOINT).is_dir()
    except (OSError, ValueError):
        return False


def train_baseline(recipe: dict[str, Any], folder: Path, identity: dict[str, Any], threads: int, count: int = 1,
                   start: Optional[Path] = None, overrides: tuple[str, ...] = ()) -> None:
    """Run ``recipe``'s first ``count`` stages as the runner would (from the checkpoint ``start`` of fewer of them,
    when given; with ``--set`` ``overrides``) and publish the checkpoint in ``folder``, atomically: the folder is
    built beside it and renamed into place (a reader sees no checkpoint or a whole one). The caller holds the
    output folder's lock."""
    from torchslim.recipe import load_recipe
    from torchslim.runner import checkpoint_stages

    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # under the lock: left by a killed process
        shutil.rmtree(stale, ignore_errors=True)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    staging.mkdir(parents=True)
    try:
        first = {**recipe, "stages": recipe["stages"][:count]}
        (staging / "recipe.yaml").write_text(recipe_yaml(first))
        begin = time.monotonic()
        checkpoint_stages(load_recipe(staging / "recipe.yaml", overrides), staging / CHECKPOINT, count, start=start,
                          threads=threads)
        (staging / SECONDS).write_text(f"{time.monotonic() - begin:.3f}\n")
        (staging / IDENTITY).write_text(json.dumps(identity, indent=1, sort_keys=True))
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished or foreign folder under this key
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def ensure_baseline(domain: Domain, recipe: dict[str, Any], out: Path, threads: int, lock: Callable[[], Any],
                    log: Callable[[str], None], count: int = 1, start: Optional[Path] = None,
                    label: str = "baseline", overrides: tuple[str, ...] = ()) -> Path:
    """The checkpoint folder after ``recipe``'s first ``count`` stages that a candidate resumes from: found in
    ``out``, else made there (``lock()``: the context manager that makes this process the only writer of ``out``;
    a second process waits for the first's checkpoint instead of making its own).

    Args:
        start: a checkpoint after fewer of the first stages to continue from (the baseline's, for a student).
        label: what the log lines call it.
        overrides: ``--set`` strings the recipe runs with (a cross-validation fold); ``domain`` is the domain they
            make, whose definition the checkpoint's key hashes.
    """
    identity = baseline_identity(domain, recipe, threads, count)
    folder = baseline_folder(out, identity)
    if not find_baseline(folder, identity):
        with lock():
            if not find_baseline(folder, identity):
                begin = time.monotonic()
                train_baseline(recipe, folder, identity, threads, count, start, overrides)
                log(f"{label}: ready in {time.monotonic() - begin:.0f}s in {folder}" + (
                    "" if overrides else f"; every candidate {'' if count == 1 else 'with it '}starts from it"))
                return folder / CHECKPOINT
    if count == 1 and not overrides:
        log(f"{label}: ready from earlier, in {folder}; every candidate starts from it")
    return folder / CHECKPOINT


def shared_seconds(checkpoint: Path) -> Optional[float]:
    """How long the stages of a shared checkpoint (``.../KEY/checkpoint``) took to run, when recorded."""
    try:
        return float((checkpoint.parent / SECONDS).read_text())
    except (OSError, ValueError):
        return None


def start_from_baseline(checkpoint: Path, run_folder: Path) -> None:
    """Put a copy of a shared checkpoint where a run into ``run_folder`` resumes from."""
    from torchslim.runner import work_folder

    work = work_folder(run_folder)
    shutil.rmtree(work, ignore_errors=True)  # an interrupted earlier attempt of this candidate starts over
    shutil.copytree(checkpoint, work)


__all__ = ["baseline_identity", "ensure_baseline", "find_baseline", "shared_seconds", "start_from_baseline",
           "train_baseline"]
