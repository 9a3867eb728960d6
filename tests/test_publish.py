"""A run folder never contradicts itself: metrics.json, the reports, model.onnx and artifact/ arrive together."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from cli_support import DIGITS_DOMAIN, cli_env
from torchslim.artifact import artifact_digest, publish, read_manifest
from torchslim.artifact import _atomic

OUTPUTS = ("artifact", "model.onnx", "report.md", "report.html", "metrics.json")


def _stage(folder, label, names):
    folder.mkdir()
    for name in names:
        if name == "artifact":
            (folder / name).mkdir()
            (folder / name / "id").write_text(label)
        elif name == "metrics.json":
            (folder / name).write_text(json.dumps({"label": label, "outputs": sorted(names)}))
        else:
            (folder / name).write_text(label)
    return folder


def _label(path):
    return (path / "id").read_text() if path.is_dir() else path.read_text()


def _consistent(out):
    """A folder with metrics.json holds exactly the outputs it lists, each of its run."""
    if not (out / "metrics.json").exists():
        return True
    record = json.loads((out / "metrics.json").read_text())
    present = sorted(n for n in OUTPUTS if (out / n).exists())
    return present == record["outputs"] and all(
        _label(out / n) == record["label"] for n in present if n != "metrics.json")


def test_a_crash_at_any_step_of_publishing_leaves_the_old_set_or_the_new_or_no_record(tmp_path, monkeypatch):
    real_replace, steps = os.replace, []
    for crash_at in range(1, 20):
        out = tmp_path / f"out{crash_at}"
        publish(_stage(tmp_path / f"old{crash_at}", "old", OUTPUTS), out, list(OUTPUTS), commit="metrics.json",
                outputs=OUTPUTS)
        new_names = ["artifact", "report.md", "report.html", "metrics.json"]  # this run exports no ONNX
        staging = _stage(tmp_path / f"new{crash_at}", "new", new_names)
        calls = []

        def crashing_replace(src, dst):
            calls.append(dst)
            if len(calls) == crash_at:
                raise KeyboardInterrupt  # stands for the kill: nothing after this step runs
            real_replace(src, dst)

        monkeypatch.setattr(_atomic.os, "replace", crashing_replace)
        try:
            publish(staging, out, new_names, commit="metrics.json", outputs=OUTPUTS)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(_atomic.os, "replace", real_replace)
        assert _consistent(out), (crash_at, sorted(p.name for p in out.iterdir()))
        steps.append(finished)
        if finished:
            assert json.loads((out / "metrics.json").read_text())["label"] == "new"
            assert not (out / "model.onnx").exists()  # the earlier run's export does not linger
            break
    assert steps[-1] and not any(steps[:-1]) and len(steps) > 4  # every step before the last one was tried


RECIPES = {
    "a": "domain: domain.yaml\nseed: 0\nstages:\n  - train: {epochs: 1, lr: 0.003, batch_size: 64}\n"
         "  - quantize: {method: kmeans, bits: 4}\n  - export: {formats: [onnx]}\n",
    "b": "domain: domain.yaml\nseed: 1\nstages:\n  - train: {epochs: 1, lr: 0.003, batch_size: 64}\n"
         "  - prune: {method: magnitude, sparsity: 0.5}\n",
}


def _check_run_folder(out):
    """The invariant after a kill at any moment: a metrics.json describes the artifact and reports beside it."""
    if not (out / "metrics.json").exists():
        return None
    metrics = json.loads((out / "metrics.json").read_text())
    digest = artifact_digest(out / "artifact")
    assert metrics["artifact_sha256"] == digest
    assert f"Artifact sha256 `{digest}`" in (out / "report.md").read_text()
    assert digest in (out / "report.html").read_text()
    exported = any(s["stage"] == "export" for s in metrics["stages"])
    assert (out / "model.onnx").exists() == exported
    assert read_manifest(out / "artifact")["baseline"]["value"] == metrics["baseline_value"]
    return digest


def _stat(path):
    """Which file ``path`` is, None when absent: a publish first takes the old metrics.json away (the folder then
    records no run), and ends by putting the new one in place (another inode and mtime)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_at_4_moments_leaves_a_consistent_run_folder(tmp_path):
    (tmp_path / "domain.yaml").write_text(DIGITS_DOMAIN)
    for name, text in RECIPES.items():
        (tmp_path / f"{name}.yaml").write_text(text)

    def start(name):
        return subprocess.Popen([sys.executable, "-m", "torchslim", "run", f"{name}.yaml", "--out", "out",
                                 "--threads", "1", "--overwrite"], cwd=tmp_path, env=cli_env(),
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    began = time.monotonic()
    assert start("a").wait(timeout=300) == 0
    full = time.monotonic() - began
    first = _check_run_folder(tmp_path / "out")
    assert first is not None
    rng, seen = random.Random(0), []
    for i in range(4):
        before = _stat(tmp_path / "out" / "metrics.json")
        proc = start("ab"[i % 2])
        if i in (1, 3):  # killed the moment it has published (while it clears its work folder, or just after)
            _wait_until(lambda: _stat(tmp_path / "out" / "metrics.json") not in (before, None), timeout=300)
        else:  # the second half of a run (saving, measuring, publishing) is where the outputs change
            time.sleep(rng.uniform(0.3, 1.1) * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(_check_run_folder(tmp_path / "out"))
    assert None not in (seen[1], seen[3]) and first not in (seen[1], seen[3])  # recipe b's runs took the folder over
    proc = start("b")
    assert proc.wait(timeout=300) == 0
    assert _check_run_folder(tmp_path / "out") is not None


def test_inspect_warns_when_the_metrics_beside_an_artifact_are_not_its_own(tmp_path):
    from click.testing import CliRunner
    from torch import nn

    from torchslim.artifact import save_artifact
    from torchslim.cli import cli

    path = save_artifact(nn.Linear(3, 2), tmp_path / "run" / "artifact", architecture={"name": "lenet300_100"})
    runner = CliRunner()
    assert "warning" not in runner.invoke(cli, ["inspect", str(path)]).output  # no metrics.json: nothing to match
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"artifact_sha256": artifact_digest(path)}))
    assert "warning" not in runner.invoke(cli, ["inspect", str(path)]).output
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"artifact_sha256": "ab" * 32}))
    result = runner.invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: {tmp_path / 'run' / 'metrics.json'} describes another artifact (sha256 "
                       f"abababababab…) than {path} (sha256 {artifact_digest(path)[:12]}…): its figures are not "
                       f"this artifact's"]
