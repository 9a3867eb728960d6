"""The text pipeline through the CLI on a tiny BERT: runs, re-measures, and refuses bad input in one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cli_support import invoke


def torchslim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return invoke(*args, cwd=cwd)


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
            expected = "model.path: sentences.txt is a file, not a sentence-transformers model directory"
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


def test_every_stage_then_eval_remeasures_the_same_cosine(text_domain):
    folder = text_domain.parent
    with (folder / "sentences.txt").open("a") as f:
        f.write("A very long sentence " + "that keeps going " * 40 + "until the end.\n")
    text_domain.write_text(text_domain.read_text().replace("runtime: torch", "runtime: onnxruntime"))
    write_recipe(folder, "  - prune: {heads: 0.25, ffn: 0.5, calibration_sentences: 64}\n"
                         "  - drop_layers: {keep: [1]}\n"
                         "  - distill: {epochs: 2, lr: 0.001}\n"
                         "  - quantize: {method: dynamic, embeddings: true}\n"
                         "  - export: {formats: [onnx]}\n")
    proc = torchslim("run", "recipe.yaml", "--out", "out", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("longer than the model's maximum length 64") == 1  # said once
    metrics = json.loads((folder / "out" / "metrics.json").read_text())
    assert metrics["encoder"]["heads"] == [3] and metrics["encoder"]["ffn"] == [32]
    assert metrics["int8_kernels"] and metrics["onnx_kind"].startswith("int8 dynamic")
    assert [s["stage"] for s in metrics["stages"]] == ["prune", "drop_layers", "distill", "quantize", "export"]
    # the shipped graph computes on real tokens only: its one attention layer rewritten
    assert metrics["stages"][3]["packed_layers"] == 1 and metrics["onnx_kind"].endswith("real tokens only")
    distill = metrics["stages"][2]
    assert distill["history"][-1]["val_cosine"] > distill["history"][0]["val_cosine"] - 1e-9
    assert 0.0 < metrics["value"] < 1.0 and metrics["baseline_value"] == pytest.approx(1.0)
    assert metrics["size_bytes"] < metrics["baseline_size_bytes"] / 2  # int8 word table: the bulk of the model
    assert (folder / "out" / "model.onnx").is_file()
    page = (folder / "out" / "report.html").read_text()  # the same report as report.md, as a page
    assert "<h1>torchslim report: " in page and "latency batch 32" in page and "<li>0: <strong>prune</strong>" in page
    assert "latency batch 32" in (folder / "out" / "report.md").read_text()

    again = torchslim("eval", "out/artifact", "--domain", "domain.yaml", "--json", cwd=folder)
    assert again.returncode == 0, again.stderr
    remeasured = json.loads(again.stdout)
    assert remeasured["value"] == pytest.approx(metrics["value"], abs=1e-6)  # the same artifact, the same sentences
    assert remeasured["recorded_value"] == pytest.approx(metrics["value"], abs=1e-9)
    # a domain whose runtime is torch measures the int8 graph too (in ONNX Runtime, said), not the dequantized
    # weights in float: the same figure
    text_domain.write_text(text_domain.read_text().replace("runtime: onnxruntime", "runtime: torch"))
    in_torch = torchslim("eval", "out/artifact", "--domain", "domain.yaml", "--json", cwd=folder)
    assert in_torch.returncode == 0 and "it is measured there, not in the domain's runtime torch" in in_torch.stderr
    assert json.loads(in_torch.stdout)["value"] == pytest.approx(metrics["value"], abs=1e-6)
    assert json.loads(in_torch.stdout)["runtime"] == "onnxruntime"

    import torchslim as ts

    model = ts.load(folder / "out" / "artifact", runtime="onnxruntime")
    assert model.int8 and model.encode(["One sentence.", "And another one."]).shape == (2, 32)
    # measured against a classification domain: one line saying what does not fit, not a missing model name
    (folder / "digits.yaml").write_text("name: d\ntask: image-classification\ndata: {source: digits}\n"
                                        "model: {name: lenet300_100}\n")
    wrong = torchslim("eval", "out/artifact", "--domain", "digits.yaml", cwd=folder)
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "error: digits.yaml: task: out/artifact holds a sentence-embedding model, which the domain's task "
        "'image-classification' does not measure"]
    # inspect counts the encoder's parameters as the run did (its int8 weights are in the graph)
    inspected = torchslim("inspect", "out/artifact", "--json", cwd=folder)
    assert inspected.returncode == 0, inspected.stderr
    totals = json.loads(inspected.stdout)["totals"]
    assert (totals["params"], totals["nonzero"]) == (metrics["params"], metrics["nonzero_params"])
    # export writes the artifact's own int8 graph, the one ONNX Runtime serves
    exported = torchslim("export", "out/artifact", "--out", "again.onnx", cwd=folder)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("wrote again.onnx (int8 model, ")
    assert (folder / "again.onnx").read_bytes() == model.onnx


def test_extra_text_trains_without_the_held_out_sentences(text_domain):
    folder = text_domain.parent
    extra = [f"Extra sentence number {i} about the garden." for i in range(40)]
    corpus = (folder / "sentences.txt").read_text().splitlines()
    (folder / "extra.txt").write_text("\n".join(extra + corpus) + "\n")  # the whole corpus, held-out part too
    write_recipe(folder, "  - drop_layers: {keep: [1]}\n"
                         "  - distill: {epochs: 1, lr: 0.001, extra_text: 'text:extra.txt'}\n")
    proc = torchslim("run", "recipe.yaml", "--out", "out", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((folder / "out" / "metrics.json").read_text())
    distill = metrics["stages"][1]
    n_val, n_test = round(0.1 * len(corpus)), round(0.2 * len(corpus))  # the domain's validation and test splits
    assert distill["extra_sentences"] == len(extra) + len(corpus) - n_val - n_test
    assert f"({n_val + n_test:,} left out: they are in the validation or test split)" in proc.stderr
    # nor does it train on the sentences the stage holds out to choose its epoch (every one is in extra.txt)
    inner_val = round(0.1 * distill["sentences"])
    assert distill["trained_on"] == distill["sentences"] - inner_val + distill["extra_sentences"] - inner_val

    (folder / "extra.txt").unlink()
    line = one_line_error(torchslim("run", "recipe.yaml", "--out", "out2", cwd=folder))
    assert "recipe.yaml" in line and "stages[1].distill.extra_text: file not found" in line, line
    assert not (folder / "out2").exists()
    write_recipe(folder, "  - distill: {epochs: 1, extra_text: 'extra.txt'}\n")
    line = one_line_error(torchslim("check", "recipe.yaml", cwd=folder))
    assert "stages[0].distill.extra_text" in line, line


def test_same_recipe_same_artifact(text_domain):
    folder = text_domain.parent
    write_recipe(folder, "  - quantize: {method: static, calibration_sentences: 32}\n")
    digests = []
    for out in ("a", "b"):
        proc = torchslim("run", "recipe.yaml", "--out", out, cwd=folder)
        assert proc.returncode == 0, proc.stderr
        digests.append(json.loads((folder / out / "metrics.json").read_text())["artifact_sha256"])
    assert digests[0] == digests[1]
