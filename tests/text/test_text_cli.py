"""The text pipeline through the CLI on a tiny BERT: runs, re-measures, and refuses bad input in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_support import cli_env


def torchslim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchslim", *args], cwd=cwd, capture_output=True, text=True,
                          env=cli_env(), timeout=600)


def write_recipe(folder: Path, stages: str) -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"domain: domain.yaml\nseed: 0\nstages:\n{stages}")
    return recipe


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, text_domain):
    folder = text_domain.parent
    write_recipe(folder, "  - export: {formats: [onnx]}\n")
    cases = {
        "empty corpus": ("data: {source: 'text:sentences.txt'", "data: {source: 'text:empty.txt'", "is empty"),
        "no usable line": ("data: {source: 'text:sentences.txt'", "data: {source: 'text:blank.txt'", "is empty"),
        "accuracy": ("metric: cosine", "metric: accuracy", "metric: a sentence-embedding domain is measured by"),
        "not a model dir": ("model: {path:", "model: {path: 'sentences.txt', x:", None),
    }
    (folder / "empty.txt").write_text("")
    (folder / "blank.txt").write_text("\n \n")
    original = text_domain.read_text()
    for name, (old, new, expected) in cases.items():
        text = original.replace(old, new)
        if name == "not a model dir":
            text = original.replace(original[original.index("model:"):].splitlines()[0],
                                    "model: {path: 'sentences.txt'}")
            expected = "model.path: sentences.txt: no such directory"
        text_domain.write_text(text)
        line = one_line_error(torchslim("run", "recipe.yaml", "--out", "out", cwd=folder))
        assert "domain.yaml" in line and expected in line, (name, line)
        assert not (folder / "out").exists(), name


def test_model_dir_without_the_files(tmp_path, text_domain):
    folder = text_domain.parent
    (folder / "not-a-model").mkdir()
    (folder / "not-a-model" / "config.json").write_text("{}")
    text = text_domain.read_text()
    text_domain.write_text(text.replace(text[text.index("model:"):].splitlines()[0], "model: {path: not-a-model}"))
    write_recipe(folder, "  - export: {formats: [onnx]}\n")
    line = one_line_error(torchslim("check", "recipe.yaml", cwd=folder))
    assert "model.path" in line and "is not a sentence-transformers model directory (no model.safetensors)" in line


def test_unknown_text_stage_lists_the_known_ones(text_domain):
    folder = text_domain.parent
    write_recipe(folder, "  - train: {epochs: 1}\n")
    line = one_line_error(torchslim("check", "recipe.yaml", cwd=folder))
    assert "stages[0].train: unknown stage; known:" in line and "export" in line
