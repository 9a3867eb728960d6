"""End-to-end: the real CLI on a short digits recipe, and every bad-input case."""

import json

import pytest
import torch

from cli_support import DIGITS_DOMAIN, cli_env, run_recipe_in
from torchslim.artifact import load_state

RECIPE = "domain: domain.yaml\nseed: 0\nstages:\n  - train: {epochs: 6, lr: 0.003, batch_size: 64}\n"
METRICS_KEYS = {"metric", "value", "baseline_value", "size_bytes", "baseline_size_bytes", "compression_ratio",
                "params", "nonzero_params", "latency_ms", "baseline_latency_ms", "threads", "runtime", "seed",
                "constraints"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    return folder, run_recipe_in(folder, DIGITS_DOMAIN, RECIPE)


def test_run_writes_metrics_report_and_artifact(trained):
    folder, proc = trained
    metrics = json.loads((folder / "out" / "metrics.json").read_text())
    assert METRICS_KEYS <= set(metrics)
    assert metrics["metric"] == "accuracy" and 0.9 <= metrics["value"] <= 1.0
    assert metrics["value"] == metrics["baseline_value"]  # no compressing stage: the baseline is the model
    assert set(metrics["latency_ms"]) == {"batch_1", "batch_64"} and metrics["threads"] >= 1
    assert metrics["latency_ratio_batch_64"] == metrics["latency_spread"]["batch_64"]["ratio"]  # paired rounds
    assert metrics["cores"] >= 1 and metrics["others_running"] >= 0  # the machine's load while timing
    assert metrics["params"] == 64 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    # the baseline is the uncompressed fp32 file: every weight takes its 4 bytes
    assert 4 * metrics["params"] < metrics["baseline_size_bytes"] < 4 * metrics["params"] + 4096
    assert metrics["compression_ratio"] == metrics["baseline_size_bytes"] / metrics["size_bytes"] >= 1.0
    assert metrics["constraints"]["max_metric_drop"]["met"] is True
    # decisions (auto) use the validation split: both models' metric there, and the constraints judged with it
    assert 0.85 <= metrics["val_value"] <= 1.0 and metrics["val_value"] == metrics["baseline_val_value"]
    assert set(metrics["val_constraints"]) == set(metrics["constraints"])
    assert metrics["val_constraints"]["max_metric_drop"]["measured"] == 0.0
    assert (folder / "out" / "report.md").read_text().startswith("# torchslim report: digits-test")
    assert {p.name for p in (folder / "out" / "artifact").iterdir()} == {"manifest.json", "model.safetensors"}
    assert not (folder / "out" / ".torchslim-work").exists()
    assert "accuracy" in proc.stdout and "compression ratio" in proc.stdout


def test_a_constraint_line_gives_the_validation_verdict_where_it_differs():
    from torchslim.cli import constraint_line

    test = {"limit": 0.02, "measured": 0.0233333, "met": False}
    assert constraint_line("max_metric_drop", test, {"limit": 0.02, "measured": 0.0133333, "met": True}) == (
        "constraint max_metric_drop: NOT met (limit 0.02, measured 0.0233333; validation: met, 0.0133333)")
    assert constraint_line("max_metric_drop", test, test) == constraint_line("max_metric_drop", test) == (
        "constraint max_metric_drop: NOT met (limit 0.02, measured 0.0233333)")


def test_eval_json_reproduces_the_recorded_metric(trained, cli):
    folder, _ = trained
    proc = cli("eval", "out/artifact", "--domain", "domain.yaml", "--json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads(proc.stdout)  # stdout carries only the JSON object
    recorded = json.loads((folder / "out" / "metrics.json").read_text())
    assert METRICS_KEYS <= set(evaluated)
    assert evaluated["value"] == recorded["value"] == evaluated["recorded_value"]
    assert evaluated["size_bytes"] == recorded["size_bytes"]
    assert evaluated["baseline_size_bytes"] == recorded["baseline_size_bytes"]


def test_eval_on_data_of_other_classes_is_refused(trained, cli, tmp_path):
    import numpy as np

    folder, _ = trained
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "three.npz", x=rng.random((60, 1, 8, 8)).astype(np.float32), y=np.arange(60) % 3)
    (tmp_path / "three.yaml").write_text(DIGITS_DOMAIN.replace("source: digits", "source: 'npz:three.npz'"))
    proc = cli("eval", str(folder / "out" / "artifact"), "--domain", "three.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: three.yaml: data: the artifact's classes are [0, 1, 2, 3, 4, 5, ...] (10), this domain's data has "
        "[0, 1, 2] (3): it was trained on other data"]


def test_same_recipe_and_seed_give_the_same_artifact(trained, cli):
    folder, _ = trained
    proc = cli("run", "recipe.yaml", "--out", "again", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    first, second = load_state(folder / "out" / "artifact"), load_state(folder / "again" / "artifact")
    # which weights differ and by how much, should they ever: the bytes alone would not say
    differ = {k: float((first[k].double() - second[k].double()).abs().max()) for k in first
              if not torch.equal(first[k], second[k])}
    assert not differ, f"weights differ between two runs (max |difference| per tensor): {differ}"
    for name in ("manifest.json", "model.safetensors"):
        assert (folder / "out" / "artifact" / name).read_bytes() == (folder / "again" / "artifact" / name).read_bytes()


def test_threads_option_sets_the_thread_count_the_run_measures_with(trained, cli):
    folder, _ = trained
    proc = cli("run", "recipe.yaml", "--out", "one", "--threads", "1", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((folder / "one" / "metrics.json").read_text())["threads"] == 1
    proc = cli("run", "recipe.yaml", "--out", "none", "--threads", "0", cwd=folder)
    assert proc.returncode == 2 and not (folder / "none").exists()
    assert proc.stderr == "error: --threads: 0 is not in the range 1<=x<=4096.\n"  # one line, like every bad input


def test_check_and_help(trained, cli):
    folder, _ = trained
    proc = cli("check", "recipe.yaml", cwd=folder)
    assert proc.returncode == 0 and proc.stdout.startswith("ok: recipe.yaml")
    for cmd in ([], ["run"], ["check"], ["eval"]):
        help_ = cli(*cmd, "--help")
        assert help_.returncode == 0 and "Usage:" in help_.stdout


@pytest.mark.parametrize("recipe, domain, expected", [
    (RECIPE.replace("epochs: 6", "epochs: 0"), DIGITS_DOMAIN, "recipe.yaml: stages[0].train.epochs: must be a positive integer"),
    (RECIPE.replace("lr: 0.003", "lr: 0.003, momentum: 1"), DIGITS_DOMAIN, "recipe.yaml: stages[0].train.momentum: unknown key"),
    (RECIPE, DIGITS_DOMAIN.replace("lenet300_100", "resnet50"), "domain.yaml: model.name: unknown model 'resnet50'"),
    (RECIPE, DIGITS_DOMAIN.replace("source: digits", "source: cifar10"), "domain.yaml: data.source: unknown data source"),
    (RECIPE, DIGITS_DOMAIN.replace("source: digits", "source: mnist1d"), "domain.yaml: model: expects inputs of shape"),
    (RECIPE, DIGITS_DOMAIN.replace("metric: accuracy", "metric: 12"), "domain.yaml: metric: must be one of"),
    (RECIPE, DIGITS_DOMAIN.replace("task: image-classification", "task: [oops"), "domain.yaml: invalid YAML"),
    (RECIPE.replace("domain.yaml", "nowhere.yaml"), DIGITS_DOMAIN, "recipe.yaml: domain: file not found: nowhere.yaml"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, cli, recipe, domain, expected):
    (tmp_path / "domain.yaml").write_text(domain)
    (tmp_path / "recipe.yaml").write_text(recipe)
    proc = cli("run", "recipe.yaml", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_recipe_file(tmp_path, cli):
    proc = cli("check", "absent.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: absent.yaml: file not found"


def test_a_missing_required_flag_or_argument_is_named(tmp_path, cli):
    proc = cli("eval", "artifact", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --domain: is required and was not given"
    proc = cli("run", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: RECIPE: is required and was not given"


def test_resume_finishes_an_interrupted_run_with_the_same_artifact(tmp_path, cli):
    """Kill a run during training (SIGKILL from outside), resume it, compare with an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors import safe_open

    (tmp_path / "domain.yaml").write_text(DIGITS_DOMAIN)
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("epochs: 6", "epochs: 30"))
    assert cli("run", "recipe.yaml", "--out", "full", cwd=tmp_path).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "torchslim", "run", "recipe.yaml", "--out", "cut"], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "cut" / ".torchslim-work" / "stage0-train.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.is_file():
            with safe_open(str(ckpt), framework="pt") as f:
                if json.loads(f.metadata()["torchslim"])["next_epoch"] >= 3:
                    break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = cli("run", "recipe.yaml", "--out", "cut", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "full" / "artifact" / "model.safetensors").read_bytes() == \
        (tmp_path / "cut" / "artifact" / "model.safetensors").read_bytes()
    # a finished run has nothing to resume: said, and left as it is (it used to run every stage again)
    finished = (tmp_path / "cut" / "metrics.json").read_bytes()
    again = cli("run", "recipe.yaml", "--out", "cut", "--resume", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        "error: --resume: cut holds a finished run (metrics.json): nothing to resume; pass --overwrite to run it "
        "again"]
    assert (tmp_path / "cut" / "metrics.json").read_bytes() == finished
    # --resume into a folder holding no run (a script that always passes it) starts afresh and says so
    fresh = cli("run", "recipe.yaml", "--out", "new", "--resume", "--set", "stages.0.train.epochs=1", cwd=tmp_path)
    assert fresh.returncode == 0 and "resume: new holds no interrupted run; starting from the first stage" in \
        fresh.stderr
