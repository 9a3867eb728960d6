"""``torchslim auto`` end to end on digits with a tiny model and budget: exit codes, the outputs, the
reproducible best recipe, resuming, and several processes on one study."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_support import cli_env, invoke

DOMAIN = """
name: digits-auto
task: image-classification
data: {source: digits, test_fraction: 0.2, val_fraction: 0.1, seed: 0}
model: {name: lenet300_100, kwargs: {hidden1: 64, hidden2: 32}}
metric: accuracy
constraints: {max_size_bytes: 50, max_metric_drop: 0.5}
"""
FAST = ["--baseline-epochs", "2", "--max-epochs", "2", "--threads", "1"]


def _auto(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``torchslim auto ARGS`` in this process (two processes and a killed search start real ones below)."""
    return invoke("auto", *args, cwd=cwd)


def _completed(out: Path, name: str = "auto-digits-auto") -> int:
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out.resolve() / 'study.db'}")
    return sum(t.state.name == "COMPLETE" for t in study.trials)


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """One impossible search (no model fits in 50 bytes) of 2 candidates."""
    folder = tmp_path_factory.mktemp("auto")
    (folder / "domain.yaml").write_text(DOMAIN)
    proc = _auto("domain.yaml", "--out", "out", "--trials", "2", *FAST, cwd=folder)
    return folder, proc


@pytest.mark.slow
def test_impossible_constraint_exits_3_with_the_closest_model_saved(search):
    from torchslim.artifact import artifact_size, read_manifest

    folder, proc = search
    assert proc.returncode == 3, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert "max_size_bytes: limit 50, closest " in last and "max_metric_drop" not in last
    out = folder / "out"
    closest = int(last.rsplit("closest ", 1)[1].replace(",", ""))
    assert artifact_size(out / "best") == closest  # best/ is the smallest: the one closest to 50 bytes
    assert read_manifest(out / "best")["metrics"]["metric"] == "accuracy"
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("number,state,feasible") and len(rows) == 3
    assert all(",COMPLETE,False," in r for r in rows[1:])
    assert "data:image/png;base64," in (out / "report.html").read_text()
    progress = [line for line in proc.stderr.splitlines() if line.startswith("trial ")]
    assert len(progress) == 2 and "infeasible (max_size_bytes)" in progress[0]
    assert "| accuracy val 0." in progress[0] and ", test 0." in progress[0]  # the split that decides, first
    assert _completed(out) == 2


@pytest.mark.slow
def test_best_recipe_reproduces_best(search):
    from torchslim.artifact import artifact_size, read_manifest

    folder, _ = search
    out = folder / "out"
    proc = invoke("run", out / "best_recipe.yaml", "--out", "again", "--threads", "1", "--quiet", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((folder / "again" / "metrics.json").read_text())
    assert metrics["size_bytes"] == artifact_size(out / "best")
    assert metrics["value"] == read_manifest(out / "best")["metrics"]["value"]


@pytest.mark.slow
def test_the_same_command_with_more_trials_continues_the_study(search, tmp_path):
    folder, _ = search
    shutil.copytree(folder, tmp_path / "copy")
    proc = _auto("domain.yaml", "--out", "out", "--trials", "3", *FAST, cwd=tmp_path / "copy")
    assert proc.returncode == 3, proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("trial ")]
    assert len(progress) == 1 and progress[0].startswith("trial 2:")  # trials 0 and 1 are not run again
    assert _completed(tmp_path / "copy" / "out") == 3
    assert len((tmp_path / "copy" / "out" / "trials.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_another_study_in_the_same_folder_is_refused(search, tmp_path):
    folder, _ = search
    shutil.copytree(folder, tmp_path / "copy")
    out = tmp_path / "copy" / "out"
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    proc = _auto("domain.yaml", "--out", "out", "--trials", "3", "--study", "other", *FAST, cwd=tmp_path / "copy")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --study: out holds the search of study 'auto-digits-auto': resume it with --study auto-digits-auto, "
        "or search study 'other' into another --out"]
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before  # its trials, best, table
    # the same study with other settings: what changed is named
    proc = _auto("domain.yaml", "--out", "out", "--trials", "3", "--baseline-epochs", "3", "--max-epochs", "2",
                 "--threads", "1", "--seed", "4", cwd=tmp_path / "copy")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --study: study 'auto-digits-auto' in this storage searched with --seed 0 (now 4), --baseline-epochs "
        "2 (now 3): give the same to resume it, or search into another --out"], proc.stderr
    # a run into the search's folder (its report.html) and a search into a run's folder are refused
    (tmp_path / "copy" / "recipe.yaml").write_text("domain: domain.yaml\nstages:\n  - train: {epochs: 1}\n")
    ran = invoke("run", "recipe.yaml", "--out", "out", "--overwrite", cwd=tmp_path / "copy")
    assert ran.returncode == 2 and ran.stderr.strip() == (
        "error: --out: out holds a search (study.json): run into another --out")
    (tmp_path / "copy" / "run").mkdir()
    (tmp_path / "copy" / "run" / "metrics.json").write_text("{}")
    proc = _auto("domain.yaml", "--out", "run", *FAST, cwd=tmp_path / "copy")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: --out: run holds a run (metrics.json): search into another --out")
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert sorted(p.name for p in (tmp_path / "copy" / "run").iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("domain_patch, args, field", [
    ("constraints: {}", [], "constraints"),
    ("constraints: {max_size_bytes: 0}", [], "constraints.max_size_bytes"),
    ("constraints: {max_size_bytes: -5}", [], "constraints.max_size_bytes"),
    ("constraints: {max_metric_drop: 0}", [], "constraints.max_metric_drop"),
    ("constraints: {min_speedup: {batch_64: 0.5}}", [], "constraints.min_speedup.batch_64"),
    ("constraints: {min_compression_ratio: 0.9}", [], "constraints.min_compression_ratio"),
    ("", ["--storage", "redis://localhost/0"], "--storage"),
    ("", ["--storage", "sqlite:////nonexistent-folder/x/study.db"], "--storage"),
    ("", ["--storage", "postgresql://nobody@127.0.0.1:1/none"], "--storage"),
    ("", ["--trials", "0"], "--trials"),
    ("", ["--timeout", "0"], "--timeout"),
    ("", ["--drop-margin", "-1"], "--drop-margin"),
    ("", ["--lr", "0"], "--lr"),
    ("", ["--folds", "1"], "--folds"),
    ("", ["--folds", "-2"], "--folds"),
    ("data: {source: digits, fold: {index: 3, of: 3}}", [], "data.fold"),
])
def test_bad_input_is_one_line_naming_the_field_and_writes_nothing(tmp_path, domain_patch, args, field):
    line = "data: {source" if domain_patch.startswith("data:") else "constraints: {max_size_bytes"
    text = "\n".join(domain_patch if row.startswith(line) and domain_patch else row for row in DOMAIN.splitlines())
    (tmp_path / "domain.yaml").write_text(text)
    proc = _auto("domain.yaml", "--out", "out", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{field}: " in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_processes_share_one_study(tmp_path):
    (tmp_path / "domain.yaml").write_text(DOMAIN)
    args = [sys.executable, "-m", "torchslim", "auto", "domain.yaml", "--out", "out", "--trials", "3", *FAST]
    first = subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    time.sleep(1)
    second = subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    outputs = [p.communicate(timeout=900) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [3, 3], [o[1] for o in outputs]
    ran = [[int(line.split(":")[0].split()[1]) for line in err.splitlines() if line.startswith("trial ")]
           for _, err in outputs]
    assert ran[0] and ran[1] and not set(ran[0]) & set(ran[1])  # each ran its own candidates
    assert _completed(tmp_path / "out") >= 3
    rows = (tmp_path / "out" / "trials.csv").read_text().splitlines()[1:]
    assert {int(r.split(",")[0]) for r in rows if ",COMPLETE," in r} >= set(ran[0]) | set(ran[1])


def _signal_mid_first_candidate(folder: Path, signum: int) -> subprocess.Popen:
    """A 2-candidate search in ``folder`` sent ``signum`` once its first candidate has started."""
    (folder / "domain.yaml").write_text(DOMAIN)
    args = [sys.executable, "-m", "torchslim", "auto", "domain.yaml", "--out", "out", "--trials", "2", *FAST]
    proc = subprocess.Popen(args, cwd=folder, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (folder / "out" / "trials" / "0" / "recipe.yaml").exists():  # the first candidate has started
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.kill(proc.pid, signum)
    return proc


@pytest.mark.slow
def test_a_search_killed_mid_candidate_resumes_to_the_same_count(tmp_path):
    proc = _signal_mid_first_candidate(tmp_path, signal.SIGKILL)
    proc.wait()
    again = _auto("domain.yaml", "--out", "out", "--trials", "2", *FAST, cwd=tmp_path)
    assert again.returncode == 3, again.stderr
    assert "trial 0: interrupted" in again.stderr
    assert _completed(tmp_path / "out") == 2
    assert (tmp_path / "out" / "best").is_dir()
    rows = {r["number"]: r for r in csv.DictReader((tmp_path / "out" / "trials.csv").open())}
    assert rows["0"]["state"] == "FAIL" and rows["0"]["candidate"] == "sparse0.9 kd kmeans5 ft2"  # named though killed


@pytest.mark.slow
def test_a_search_stopped_by_ctrl_c_runs_the_interrupted_candidate_again(tmp_path):
    # Optuna records a trial that a KeyboardInterrupt ends as failed, like one whose candidate raised: unmarked, the
    # resumed search would never run that candidate (here the first standard compression)
    import optuna

    proc = _signal_mid_first_candidate(tmp_path, signal.SIGINT)
    assert proc.wait(timeout=120) != 0
    again = _auto("domain.yaml", "--out", "out", "--trials", "2", *FAST, cwd=tmp_path)
    assert again.returncode in (0, 3), again.stderr
    assert "trial 0: interrupted (stopped by Ctrl-C); its candidate runs again" in again.stderr
    study = optuna.load_study(study_name="auto-digits-auto", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    (rerun,) = [t for t in study.trials if t.user_attrs.get("rerun_of") == 0]
    assert rerun.state.name == "COMPLETE" and rerun.params == study.trials[0].params
    assert _completed(tmp_path / "out") == 2
    rows = {r["number"]: r for r in csv.DictReader((tmp_path / "out" / "trials.csv").open())}
    assert rows["0"]["state"] == "FAIL" and rows["0"]["note"] == (
        f"failed: interrupted (stopped by Ctrl-C); its candidate runs again as trial {rerun.number}")
    assert rows["0"]["candidate"] == rows[str(rerun.number)]["candidate"] == "sparse0.9 kd kmeans5 ft2"
    again = _auto("domain.yaml", "--out", "out", "--trials", "2", *FAST, cwd=tmp_path)  # rerun once, not again
    assert "interrupted" not in again.stderr and _completed(tmp_path / "out") == 2


@pytest.mark.slow
def test_the_best_is_cross_validated_on_folds_a_run_reproduces(tmp_path):
    import optuna

    (tmp_path / "domain.yaml").write_text(DOMAIN.replace("max_size_bytes: 50, max_metric_drop: 0.5",
                                                         "max_size_bytes: 400000, max_metric_drop: 0.5"))
    proc = _auto("domain.yaml", "--out", "out", "--trials", "2", "--folds", "2", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    best = int(next(line for line in proc.stdout.splitlines() if line.startswith("best: ")).split()[2])
    said = [line for line in proc.stderr.splitlines() if line.startswith("cross-validation: ")]
    assert said and said[-1].startswith(f"cross-validation: trial {best} (") and ": holds |" in said[-1]
    study = optuna.load_study(study_name="auto-digits-auto", storage=f"sqlite:///{out / 'study.db'}")
    cv = study.user_attrs[f"cv:{best}"]
    assert cv["met"] and cv["folds"] == 2 and cv["samples"] == 1437  # every training and validation digit once
    row = next(r for r in csv.DictReader(open(out / "trials.csv")) if int(r["number"]) == best)
    assert row["cv_holds"] == "True" and float(row["cv_drop"]) == pytest.approx(cv["drop"])
    fold = json.loads((out / "trials" / str(best) / "folds" / "1" / "metrics.json").read_text())
    assert fold["data"]["fold"] == {"index": 1, "of": 2} and fold["data"]["val"] in (718, 719)
    # the fold's run is the candidate's recipe with the fold set: torchslim run reproduces its artifact
    again = invoke("run", out / "trials" / str(best) / "recipe.yaml", "--set", "domain.data.fold={index: 1, of: 2}",
                   "--out", "again", "--threads", "1", "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["artifact_sha256"] == fold["artifact_sha256"]
    # the same command again: the study keeps the verdict, nothing is cross-validated twice
    proc = _auto("domain.yaml", "--out", "out", "--trials", "2", "--folds", "2", *FAST, cwd=tmp_path)
    assert proc.returncode == 0 and "cross-validation: trial" not in proc.stderr
