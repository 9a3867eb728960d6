"""The shipped Deep Compression recipe (``make demo``), run with a few epochs per stage: the pipeline's stages,
the sizes they leave (the artifact's size follows from width, sparsity and bits, not from the epochs) and the
outputs a user reads. Accuracy at full length is benchmarks/deep_compression.py's business."""

import json

import pytest

from cli_support import ROOT, invoke

RECIPE = ROOT / "recipes" / "digits" / "deep_compression.yaml"
SHORT = ["stages.0.train.epochs=2", "stages.1.distill.epochs=2", "stages.2.prune.finetune.epochs=1",
         "stages.3.distill.epochs=1", "stages.4.quantize.finetune.epochs=1", "stages.5.distill.epochs=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deep") / "out"
    sets = [arg for s in SHORT for arg in ("--set", s)]
    proc = invoke("run", RECIPE, "--out", out, *sets)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads((out / "metrics.json").read_text()), proc.stdout


def test_stages_shrink_the_model_step_by_step(run):
    _, metrics, _ = run
    sizes = {r["index"]: r for r in metrics["stages"] if "size_bytes" in r}
    distilled, pruned, quantized = sizes[1], sizes[2], sizes[4]
    assert sorted(sizes) == [1, 2, 3, 4, 5]  # every stage after the baseline but export, which keeps the model
    assert distilled["params"] == 8890 == metrics["params"]  # 64-90-30-10 at width 0.3
    assert metrics["baseline_params"] == 50610
    assert pruned["nonzero_params"] <= 0.32 * pruned["params"]  # 70% of the weights (biases stay)
    assert quantized["size_bytes"] < pruned["size_bytes"] / 2 < distilled["size_bytes"] / 4
    # entropy coding is the last step of the table: it saves bytes over the relative-index + code entries
    assert metrics["size_bytes"] < 0.95 * metrics["size_bytes_no_entropy"]


def test_the_shipped_artifact_is_over_40x_smaller_than_the_fp32_file(run):
    out, metrics, stdout = run
    files = sum(p.stat().st_size for p in (out / "artifact").iterdir())
    assert metrics["size_bytes"] == files
    assert metrics["compression_ratio"] == pytest.approx(metrics["baseline_size_bytes"] / files)
    assert metrics["compression_ratio"] > 40
    assert (out / "model.onnx").is_file() and "compression ratio" in stdout


def test_eval_remeasures_the_recorded_metric(run):
    out, metrics, _ = run
    proc = invoke("eval", out / "artifact", "--domain", ROOT / "domains" / "digits.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["value"] == metrics["value"]


def test_every_key_of_the_shipped_manifest_is_in_the_manifest_dictionary(run):
    """The dictionary is the format's vocabulary: a key the runner or a stage writes and it lacks costs its length
    in every artifact (regenerate it with ``python -m torchslim.artifact._vocabulary``, new format version)."""
    from torchslim.artifact import read_manifest
    from torchslim.artifact._dictionary import MANIFEST_DICTIONARY

    out, _, _ = run
    manifest = read_manifest(out / "artifact")
    text, missing = MANIFEST_DICTIONARY.decode(), []

    def visit(value, names):
        if isinstance(value, dict):
            for k, v in value.items():
                if names and f'"{k}":' not in text:
                    missing.append(k)
                visit(v, names=k not in ("kwargs", "tensors", "layers"))  # the model's own names
        elif isinstance(value, list):
            for v in value:
                visit(v, names)

    visit({k: v for k, v in manifest.items() if k not in ("format", "version")}, names=True)
    assert "quantization" in manifest and missing == []
