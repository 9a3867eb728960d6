"""Helpers shared by the top-level tests (a module name no package test folder uses)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    """Environment for a ``python -m torchslim`` subprocess: quiet progress, this checkout's sources first (then
    whatever ``PYTHONPATH`` already held: dependencies installed outside the interpreter's own site-packages)."""
    return dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=python_path())


def python_path() -> str:
    """This checkout's sources, then the inherited ``PYTHONPATH``."""
    return os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)


def invoke(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``torchslim ARGS`` run in this process (in ``cwd``): the CompletedProcess a subprocess would give.

    In-process saves each call the interpreter's start (importing torch, the ONNX exporter's registry: ~10 s per
    call on a 2-core machine). The process-wide state a command may set is put back after it: the thread count,
    the warning hook, environment variables, the working folder, the once-per-process warnings. Tests of process
    behaviour (signals, several processes at once) start a real ``python -m torchslim`` instead.
    """
    import warnings

    import torch
    from click.testing import CliRunner

    from torchslim import _load
    from torchslim.cli import cli

    threads, here, environ = torch.get_num_threads(), os.getcwd(), dict(os.environ)
    warned = set(_load._WARNED_OF)
    _load._WARNED_OF.clear()  # said once per process: a fresh process would say it again
    try:
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings():  # the command's warning hook, and a fresh "shown once" registry
            warnings.simplefilter("default")
            result = CliRunner().invoke(cli, list(map(str, args)), env={"TQDM_DISABLE": "1"},
                                        prog_name="torchslim")
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environ)
        _load._WARNED_OF.clear()
        _load._WARNED_OF.update(warned)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["torchslim", *map(str, args)], result.exit_code, result.stdout,
                                       result.stderr)


def run_recipe_in(folder: Path, domain: str, recipe: str) -> subprocess.CompletedProcess:
    """Write ``domain.yaml`` and ``recipe.yaml`` into ``folder`` and ``torchslim run`` them into ``folder/out``."""
    (folder / "domain.yaml").write_text(domain)
    (folder / "recipe.yaml").write_text(recipe)
    proc = invoke("run", "recipe.yaml", "--out", "out", cwd=folder)
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
