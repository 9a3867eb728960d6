"""Artifacts outlive the process that wrote them: a SIGKILL mid-save, a fresh interpreter, the real CLI."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from cli_support import DIGITS_DOMAIN, cli_env
from torchslim.artifact import ArtifactError, load_state, read_manifest
from torchslim.models import LeNet300100

SAVER = textwrap.dedent("""
    import sys, torch
    from torchslim.artifact import save_artifact
    from torchslim.models import LeNet300100

    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(LeNet300100(hidden1=1500, hidden2=1000))  # 1.6M params: 6.4 MB of fp32
    print("saving", flush=True)
    for i in range(10 ** 6):
        save_artifact(models[i % 2], sys.argv[1], architecture={"name": "lenet300_100",
                      "kwargs": {"hidden1": 1500, "hidden2": 1000}})
        if i == 0:
            print("saved", flush=True)  # an artifact exists: later kills hit saves over it
""")


def _states():
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(LeNet300100(hidden1=1500, hidden2=1000).state_dict())
    return states


def test_sigkill_during_saves_leaves_the_previous_artifact_or_none(tmp_path):
    path = tmp_path / "artifact"
    states, rng, outcomes = _states(), random.Random(0), []
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True,
                                env=cli_env())
        assert proc.stdout.readline().strip() == "saving"
        if rng.random() < 0.5:  # half the kills wait for a first complete save (however slow the machine is)
            assert proc.stdout.readline().strip() == "saved"
        time.sleep(rng.uniform(0.2, 2.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if not path.exists():
            outcomes.append("none")
            continue
        state = load_state(path)  # verified: a damaged artifact raises ArtifactError
        assert any(all(torch.equal(state[k], s[k]) for k in s) for s in states)
        outcomes.append("complete")
    assert "complete" in outcomes, outcomes  # the test did kill saves over an existing artifact


@pytest.fixture(scope="module")
def compressed_run(tmp_path_factory):
    """A real CLI run on the small digits domain: train, prune 80% (magnitude), 4-bit k-means, each fine-tuned."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "domain.yaml").write_text(DIGITS_DOMAIN)
    (folder / "recipe.yaml").write_text(
        "domain: domain.yaml\nseed: 0\nstages:\n  - train: {epochs: 4, lr: 0.003, batch_size: 64}\n"
        "  - prune: {method: magnitude, sparsity: 0.8, finetune: {epochs: 3, lr: 0.003}}\n"
        "  - quantize: {method: kmeans, bits: 4, finetune: {epochs: 2, lr: 0.0003}}\n")
    proc = subprocess.run([sys.executable, "-m", "torchslim", "run", "recipe.yaml", "--out", "out"], cwd=folder,
                          capture_output=True, text=True, env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    return folder / "out" / "artifact"


RELOAD = textwrap.dedent("""
    import json, sys
    import torchslim
    from torchslim.artifact import read_manifest
    from torchslim.data import load_splits
    from torchslim.domain import load_domain
    from torchslim.evaluate import compute_metric

    manifest = read_manifest(sys.argv[1])
    domain = load_domain(manifest["domain"])  # everything needed is in the artifact
    splits = load_splits(domain.data, input_shape=tuple(manifest["input_shape"]))
    value = compute_metric(torchslim.load(sys.argv[1]), splits.test, domain.metric)
    print(json.dumps({"value": value, "recorded": manifest["metrics"]["value"]}))
""")


def test_a_fresh_process_reproduces_the_recorded_metric(compressed_run):
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(compressed_run)], capture_output=True, text=True,
                          env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["value"] == result["recorded"] and result["value"] > 0.8


def test_cli_run_artifact_is_small_and_inspectable(compressed_run):
    metrics = json.loads((compressed_run.parent / "metrics.json").read_text())
    manifest = read_manifest(compressed_run)
    assert sorted(p.name for p in compressed_run.iterdir()) == ["manifest.json", "model.safetensors"]
    encodings = {manifest["tensors"][f"fc{i}.weight_source.packed"]["encoding"] for i in (1, 2, 3)}
    assert "sparse4" in encodings <= {"sparse4", "packed4"}  # per layer, whichever is smaller
    assert metrics["compression_ratio"] > 9  # measured 9.8: at 64-32 hidden units biases and manifest weigh more
    proc = subprocess.run([sys.executable, "-m", "torchslim", "inspect", str(compressed_run), "--json"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert [r["name"] for r in info["layers"]] == ["fc1", "fc2", "fc3"]
    assert all(r["bits"] == 4 and r["sparsity"] == pytest.approx(0.8, abs=0.002) for r in info["layers"])
    assert info["totals"]["nonzero"] == metrics["nonzero_params"]
    # the run's size_bytes was measured before the final metrics were added to the manifest
    assert abs(info["totals"]["bytes"]["total"] - metrics["size_bytes"]) < 100


def test_cli_eval_refuses_a_truncated_artifact(compressed_run, tmp_path):
    import shutil

    copy = tmp_path / "artifact"
    shutil.copytree(compressed_run, copy)
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) - 5])
    (tmp_path / "domain.yaml").write_text(DIGITS_DOMAIN)
    proc = subprocess.run([sys.executable, "-m", "torchslim", "eval", str(copy), "--domain", "domain.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {copy}: model.safetensors is truncated or corrupted "
                                                "(SafetensorError)"]
    with pytest.raises(ArtifactError):
        read_manifest(copy)
