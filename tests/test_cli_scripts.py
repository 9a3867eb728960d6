"""The CLI in scripts: --quiet, --threads on eval, a notice before replacing an earlier run, numpy into ORT."""

import json

import numpy as np
import torch

from cli_support import DIGITS_DOMAIN

RECIPE = "domain: domain.yaml\nseed: 0\nstages:\n  - train: {epochs: 2, lr: 0.003, batch_size: 64}\n"


def test_quiet_run_prints_only_results_and_a_rerun_needs_overwrite(tmp_path, cli):
    (tmp_path / "domain.yaml").write_text(DIGITS_DOMAIN)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    loud = cli("run", "recipe.yaml", "--out", "out", "--threads", "1", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "stage 0: train" in loud.stderr and "earlier run" not in loud.stderr
    last = loud.stdout.strip().splitlines()[-1]
    assert last.startswith("wrote ") and "report.html" in last and "artifact" in last
    before = (tmp_path / "out" / "metrics.json").read_bytes()
    again = cli("run", "recipe.yaml", "--out", "out", "--threads", "1", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr == (
        "error: --out: out holds an earlier run (metrics.json): pass --overwrite to replace it, or --resume to "
        "continue an interrupted one\n")
    assert (tmp_path / "out" / "metrics.json").read_bytes() == before  # untouched
    quiet = cli("run", "recipe.yaml", "--out", "out", "--threads", "1", "--quiet", "--overwrite", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "accuracy" in quiet.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    evaluated = cli("eval", "out/artifact", "--domain", "domain.yaml", "--json", "--threads", "1", "--quiet",
                    cwd=tmp_path)
    assert evaluated.returncode == 0 and evaluated.stderr == ""
    result = json.loads(evaluated.stdout)
    assert result["threads"] == 1 and result["value"] == metrics["value"]
    assert result["artifact_sha256"] == metrics["artifact_sha256"]


def test_onnxruntime_session_takes_numpy_arrays_and_answers_in_kind(tmp_path):
    from torchslim.export.onnx_export import export_onnx
    from torchslim.export.runtime import OrtSession

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    x = torch.rand(3, 1, 8, 8)
    session = OrtSession(export_onnx(model, x))
    as_array = session(x.numpy().astype(np.float64))  # any float array: cast as the model expects
    assert isinstance(as_array, np.ndarray) and as_array.shape == (3, 10)
    as_tensor = session(x)
    assert isinstance(as_tensor, torch.Tensor)
    assert np.allclose(as_array, as_tensor.numpy()) and np.allclose(as_array, model(x).detach().numpy(), atol=1e-5)


def test_without_a_terminal_progress_is_one_line_per_epoch(tmp_path):
    import os
    import subprocess
    import sys

    from cli_support import python_path

    (tmp_path / "domain.yaml").write_text(DIGITS_DOMAIN)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env["PYTHONPATH"] = python_path()
    proc = subprocess.run([sys.executable, "-m", "torchslim", "run", "recipe.yaml", "--out", "out", "--threads", "1"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    epochs = [line for line in proc.stderr.splitlines() if ": epoch " in line]
    assert [line.split(" loss ")[0] for line in epochs] == ["train: epoch 1/2", "train: epoch 2/2"]


def test_check_warns_when_an_int8_method_cannot_be_faster_on_the_runtime(tmp_path, cli):
    (tmp_path / "domain.yaml").write_text(DIGITS_DOMAIN)
    (tmp_path / "recipe.yaml").write_text(RECIPE + "  - quantize: {method: static}\n")
    proc = cli("check", "recipe.yaml", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("ok: recipe.yaml")
    assert proc.stderr.splitlines() == [
        "warning: recipe.yaml: stages[1].quantize: method static runs int8 kernels only under runtime: onnxruntime; "
        "under runtime: torch it is simulated and will measure slower than its baseline (set the domain's runtime: "
        "onnxruntime)"]
    # run says it too, first, before any training
    proc = cli("run", "recipe.yaml", "--out", "out", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr.splitlines()[0].startswith(
        "warning: recipe.yaml: stages[1].quantize: method static runs int8 kernels only under runtime: onnxruntime")
    (tmp_path / "domain.yaml").write_text(DIGITS_DOMAIN + "runtime: onnxruntime\n")
    assert cli("check", "recipe.yaml", cwd=tmp_path).stderr == ""
