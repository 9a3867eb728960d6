"""The baseline every candidate starts from, trained once per search.

A candidate recipe's first stage trains the baseline; with the same domain, seed, stage and thread count every
candidate would train the same weights, so most of a search's time went into training them again. The first
process that needs them trains them, under the output folder's lock, and leaves in ``OUT/baseline/KEY/`` the
runner's checkpoint of that finished first stage (``KEY`` hashes what the training depends on, recorded beside it
in ``identity.json``). A candidate resumes its own recipe from a copy of that checkpoint: its recipe, its stage
seeds, its records and its artifact are those of a run that trained the baseline itself, so the recipe reproduces
it with ``torchslim run`` from scratch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from torchslim.domain import Domain

BASELINE_DIR = "baseline"
CHECKPOINT = "checkpoint"  # the runner's work folder after the first stage
IDENTITY = "identity.json"


def baseline_identity(domain: Domain, recipe: dict[str, Any], threads: int) -> dict[str, Any]:
    """What the trained weights depend on: the domain, the seed, the first (training) stage and the thread count
    (float sums in another order give other bits)."""
    return {"domain": domain.to_dict(), "seed": recipe["seed"], "stage": recipe["stages"][0], "threads": threads}


def baseline_folder(out: Path, identity: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return out / BASELINE_DIR / key


def find_baseline(folder: Path, identity: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished baseline trained with exactly ``identity``."""
    try:
        return json.loads((folder / IDENTITY).read_text()) == identity and (folder / CHECKPOINT).is_dir()
    except (OSError, ValueError):
        return False


def train_baseline(recipe: dict[str, Any], folder: Path, identity: dict[str, Any], threads: int) -> None:
    """Run ``recipe``'s first stage as the runner would and publish its checkpoint in ``folder``, atomically: the
    folder is built beside it and renamed into place (a reader sees no baseline or a whole one). The caller holds
    the output folder's lock."""
    from torchslim.recipe import load_recipe
    from torchslim.runner import WORK_DIR, _save_progress, prepare, seed_everything
    from torchslim.stages import STAGES

    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # under the lock: left by a killed process
        shutil.rmtree(stale, ignore_errors=True)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    staging.mkdir(parents=True)
    try:
        first = {**recipe, "stages": recipe["stages"][:1]}
        (staging / "recipe.yaml").write_text(yaml.safe_dump(first, sort_keys=False))
        loaded = load_recipe(staging / "recipe.yaml")
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:  # the runner's loop for one stage (runner._run_stages), stopped before it publishes
            ctx = prepare(loaded, log=lambda _m: None)
            ctx.work_dir = staging / WORK_DIR
            ctx.work_dir.mkdir()
            stage = loaded.stages[0]
            ctx.stage_index = stage.index
            seed_everything(loaded.seed + stage.index)
            record = STAGES[stage.name].run(ctx, stage.config)
            ctx.records.append({"stage": stage.name, "index": stage.index, **record})
            _save_progress(ctx, stage.index + 1)
        finally:
            torch.set_num_threads(before)
        os.replace(ctx.work_dir, staging / CHECKPOINT)
        (staging / IDENTITY).write_text(json.dumps(identity, indent=1, sort_keys=True))
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished or foreign folder under this key
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def ensure_baseline(domain: Domain, recipe: dict[str, Any], out: Path, threads: int, lock: Callable[[], Any],
                    log: Callable[[str], None]) -> Path:
    """The checkpoint folder a candidate of ``recipe``'s search resumes from: found in ``out``, else trained there
    (``lock()``: the context manager that makes this process the only writer of ``out``; a second process waits
    for the first's baseline instead of training its own)."""
    identity = baseline_identity(domain, recipe, threads)
    folder = baseline_folder(out, identity)
    if not find_baseline(folder, identity):
        with lock():
            if not find_baseline(folder, identity):
                start = time.monotonic()
                train_baseline(recipe, folder, identity, threads)
                log(f"baseline: trained in {time.monotonic() - start:.0f}s into {folder}; every candidate starts "
                    f"from it")
                return folder / CHECKPOINT
    log(f"baseline: trained earlier, in {folder}; every candidate starts from it")
    return folder / CHECKPOINT


def start_from_baseline(checkpoint: Path, run_folder: Path) -> None:
    """Put a copy of the baseline's checkpoint where a run into ``run_folder`` resumes from."""
    from torchslim.runner import WORK_DIR

    work = run_folder / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)  # an interrupted earlier attempt of this candidate starts over
    shutil.copytree(checkpoint, work)


__all__ = ["baseline_identity", "ensure_baseline", "find_baseline", "start_from_baseline", "train_baseline"]
