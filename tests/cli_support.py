"""Helpers shared by the top-level tests (a module name no package test folder uses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    """Environment for a ``python -m torchslim`` subprocess: quiet progress, this checkout's sources first (then
    whatever ``PYTHONPATH`` already held: dependencies installed outside the interpreter's own site-packages)."""
    return dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=python_path())


def python_path() -> str:
    """This checkout's sources, then the inherited ``PYTHONPATH``."""
    return os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)


def run_recipe_in(folder: Path, domain: str, recipe: str) -> subprocess.CompletedProcess:
    """Write ``domain.yaml`` and ``recipe.yaml`` into ``folder`` and ``torchslim run`` them into ``folder/out``."""
    (folder / "domain.yaml").write_text(domain)
    (folder / "recipe.yaml").write_text(recipe)
    proc = subprocess.run([sys.executable, "-m", "torchslim", "run", "recipe.yaml", "--out", "out"], cwd=folder,
                          capture_output=True, text=True, env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


DIGITS_DOMAIN = """
name: digits-test
task: image-classification
data: {source: digits, test_fraction: 0.2, val_fraction: 0.1, seed: 0}
model: {name: lenet300_100, kwargs: {hidden1: 64, hidden2: 32}}
metric: accuracy
constraints: {max_metric_drop: 0.01, max_size_bytes: 100000000}
"""
