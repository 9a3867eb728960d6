"""Shared fixtures: running the real CLI (in this process), and small recipe files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli_support import invoke

# The suite runs in two worker processes on two cores: each one's timing always sees the other busy, and waiting
# for it to stop would only slow the suite (the retry itself is tested with the variable set).
os.environ.setdefault("TORCHSLIM_TIMING_RETRIES", "0")


@pytest.fixture
def one_thread():
    """One torch thread and seed 0 for the test (timings and training are steadier on a shared 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli():
    """``cli("run", "r.yaml", "--out", "d", cwd=folder)`` -> CompletedProcess of ``torchslim ...``, run in this
    process (:func:`cli_support.invoke`)."""
    return invoke


@pytest.fixture
def write(tmp_path):
    """``write("name.yaml", text)`` -> path of a file in the test's temporary folder."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return _write
