"""Helpers shared by the top-level tests (a module name no package test folder uses)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    """Environment for a ``python -m torchslim`` subprocess: quiet progress, this checkout's sources."""
    return dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(ROOT / "src"))


DIGITS_DOMAIN = """
name: digits-test
task: image-classification
data: {source: digits, test_fraction: 0.2, val_fraction: 0.1, seed: 0}
model: {name: lenet300_100, kwargs: {hidden1: 64, hidden2: 32}}
metric: accuracy
constraints: {max_metric_drop: 0.01, max_size_bytes: 100000000}
"""
