"""Shared fixtures: running the real CLI in a subprocess, and small recipe files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(ROOT / "src"))
    return env


@pytest.fixture
def cli():
    """``cli("run", "r.yaml", "--out", "d")`` -> CompletedProcess of ``python -m torchslim ...``."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torchslim", *map(str, args)], capture_output=True,
                              text=True, env=_env(), cwd=cwd, timeout=timeout)

    return run


@pytest.fixture
def write(tmp_path):
    """``write("name.yaml", text)`` -> path of a file in the test's temporary folder."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return _write


DIGITS_DOMAIN = """
name: digits-test
task: image-classification
data: {source: digits, test_fraction: 0.2, val_fraction: 0.1, seed: 0}
model: {name: lenet300_100, kwargs: {hidden1: 64, hidden2: 32}}
metric: accuracy
constraints: {max_metric_drop: 0.01, max_size_bytes: 100000000}
"""
