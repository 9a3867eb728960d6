"""``torchrun --nproc_per_node=2 -m torchslim run RECIPE --out DIR`` on CPU (gloo), end to end.

Two processes train a teacher, distill it into a smaller student (with a learned feature projection, trained
beside the DDP-wrapped student), prune 60% of the student's weights in two steps with fine-tuning, fine-tune
the pruned student against the teacher again, and quantize it with QAT. Checked: the run finishes; only rank 0 writes (one summary, the
three outputs, no work folder left); the replicas end bit-identical (each rank's digest, gathered inside the run
into metrics.json, equals the digest of the saved artifact), and so do the pruning masks, whose zeros survive the
last training; and the reported metric equals the saved model's metric as re-measured by ``torchslim eval --json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from torchslim.artifact import load_artifact
from torchslim.cli import cli
from torchslim.distributed import state_digest

from torchrun_support import run_torchrun

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = ROOT / "domains" / "digits.yaml"

RECIPE = f"""\
domain: {DOMAIN}
seed: 3
stages:
  - train: {{epochs: 4, lr: 0.002, batch_size: 32}}
  - distill:
      student: {{name: lenet300_100, kwargs: {{width: 0.25}}}}
      temperature: 4.0
      alpha: 0.7
      features: [{{student: fc2, teacher: fc2, weight: 0.05}}]
      epochs: 4
      lr: 0.005
      batch_size: 32
  - prune:
      method: magnitude
      sparsity: 0.6
      scope: global
      schedule: {{kind: polynomial, steps: 2}}
      finetune: {{epochs: 1, lr: 0.001}}
  - distill: {{temperature: 2.0, alpha: 0.5, epochs: 2, lr: 0.001, batch_size: 32}}
  - quantize: {{method: qat, bits: 4, finetune: {{epochs: 1, lr: 0.0005}}}}
"""


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_two_process_run_agrees_across_ranks_and_with_eval(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    proc = run_torchrun("-m", "torchslim", "run", recipe, "--out", out, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Only rank 0 writes: one summary on stdout, the three outputs and nothing else.
    assert proc.stdout.count("wrote ") == 1
    assert sorted(p.name for p in out.iterdir()) == ["artifact", "metrics.json", "report.html", "report.md"]
    metrics = json.loads((out / "metrics.json").read_text())
    train, kd, prune, recovery, qat = metrics["stages"]
    assert [s["stage"] for s in metrics["stages"]] == ["train", "distill", "prune", "distill", "quantize"]

    # Both ranks took part, and their weights agree bit for bit after every stage that trains (training,
    # distillation, pruning with fine-tuning between its steps, QAT), as do the pruning masks.
    model, manifest = load_artifact(out / "artifact")
    for record in metrics["stages"]:
        assert len(record["rank_digests"]) == 2
        assert record["rank_digests"][0] == record["rank_digests"][1]
    assert len({r["rank_digests"][0] for r in metrics["stages"]}) == 5  # each stage changed the weights
    assert len(prune["mask_digests"]) == 2 and prune["mask_digests"][0] == prune["mask_digests"][1]
    assert qat["rank_digests"][0] == state_digest(model)  # ...and they are the saved weights
    # the masks held through the last distillation and QAT on both ranks: the saved student keeps the pruned zeros
    weights = [model.get_submodule(name).weight for name in prune["masked_layers"]]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.6, abs=1e-3)

    # The student replaced the teacher: the report describes the student, the baseline stays the teacher.
    assert manifest["architecture"] == {"name": "lenet300_100", "kwargs": {"width": 0.25, "num_classes": 10}}
    assert kd["student_params"] == metrics["params"] == 64 * 75 + 75 + 75 * 25 + 25 + 25 * 10 + 10
    assert kd["teacher_params"] == metrics["baseline_params"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert train["val_metric"] > 0.8 and metrics["baseline_value"] > 0.8  # the teacher learned
    assert kd["val_metric"] > 0.7 and recovery["val_metric"] > 0.7 and metrics["value"] > 0.6  # the student too

    # The reported metric is the saved model's, as `torchslim eval --json` re-measures it.
    result = CliRunner().invoke(cli, ["eval", str(out / "artifact"), "--domain", str(DOMAIN), "--json"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert measured["value"] == metrics["value"]
    assert measured["baseline_value"] == metrics["baseline_value"]
