"""The report of a real run: per-stage sizes equal the run's measurements, per-layer density equals the reloaded
artifact's, and report.html is one self-contained page with its plots embedded."""

import importlib.util
import json
import re

import pytest
import torch
from torch import nn

from cli_support import DIGITS_DOMAIN, run_recipe_in

RECIPE = """domain: domain.yaml
seed: 0
stages:
  - train: {epochs: 3, lr: 0.003, batch_size: 64}
  - prune: {method: magnitude, sparsity: 0.8, finetune: {epochs: 1, lr: 0.001},
            sensitivity: {sparsities: [0.5, 0.9], max_drop: 0.05}}
  - quantize: {method: kmeans, bits: 4, finetune: {epochs: 1}}
"""

requires_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    run_recipe_in(folder, DIGITS_DOMAIN, RECIPE)
    out = folder / "out"
    return out, json.loads((out / "metrics.json").read_text()), (out / "report.md").read_text()


def _table(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after ``heading``, as stripped cells."""
    lines = md.split(heading, 1)[1].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return table[2:]  # after the header and the rule


def test_stage_table_has_the_run_sizes(run):
    _, metrics, md = run
    rows = _table(md, "## Size and metric by stage")
    measured = [r for r in metrics["stages"] if "size_bytes" in r]
    assert [r["stage"] for r in measured] == ["prune", "quantize"]  # the train stage ran before the baseline
    assert len(rows) == len(measured) + 1 and rows[-1][0] == "shipped artifact"
    assert [int(r[2].replace(",", "")) for r in rows] == [r["size_bytes"] for r in measured] + [metrics["size_bytes"]]
    plain = [r["size_bytes_no_entropy"] for r in measured] + [metrics["size_bytes_no_entropy"]]
    assert [int(r[1].replace(",", "")) for r in rows] == plain
    # zstd on the sparse entries and codes saves bytes at every stage; the shipped artifact is the last stage's
    assert all(p > r["size_bytes"] for p, r in zip(plain, measured + [metrics]))
    assert abs(plain[-1] - plain[-2]) < 1024
    prune, quant = measured
    # 4-bit codes replace the fp32 weights: the quantized model is far smaller than the pruned one
    assert quant["size_bytes"] < prune["size_bytes"] / 2 and quant["compression_ratio"] > 2 * prune["compression_ratio"]
    # the last stage's model is the shipped one: same bytes up to the final manifest's added records
    assert abs(quant["size_bytes"] - metrics["size_bytes"]) < 1024
    assert prune["nonzero_params"] < 0.4 * prune["params"] and prune["params"] == metrics["params"]
    # the saved and reloaded model validates as the one in memory did
    assert prune["artifact_val_metric"] == pytest.approx(prune["val_metric"])
    assert rows[-1][7] == f"{100 * metrics['value']:.2f} %"


def test_layer_table_matches_the_reloaded_artifact(run):
    from torchslim.artifact import load_artifact

    out, metrics, md = run
    model, manifest = load_artifact(out / "artifact")
    expected = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) or hasattr(module, "weight_source"):
                w = module.weight  # a quantized layer decodes its codes
                expected[name] = (int(torch.count_nonzero(w)), int(torch.count_nonzero(w)) / w.numel())
    rows = {r[0]: r for r in _table(md, "## Layers")}
    assert set(rows) == set(expected) == {"fc1", "fc2", "fc3"}
    bits = {n: spec["bits"] for n, spec in manifest["quantization"]["layers"].items()}
    for name, (nonzero, fraction) in expected.items():
        assert int(rows[name][4].replace(",", "")) == nonzero
        assert float(rows[name][5]) == pytest.approx(fraction, abs=5e-5)
        assert rows[name][6] == str(bits.get(name, 32))
    assert sum(n for n, _ in expected.values()) < 0.4 * sum(r["params"] for r in metrics["layers"])
    assert set(bits.values()) == {4}


def test_sensitivity_and_constraints_are_reported(run):
    _, metrics, md = run
    (prune,) = [r for r in metrics["stages"] if r["stage"] == "prune"]
    rows = _table(md, "## Sensitivity")
    layers = {r["layer"] for r in prune["sensitivity"]}
    assert {r[0] for r in rows} == layers and all(len(r) == 3 for r in rows)  # two sparsities each
    for entry in prune["sensitivity"]:
        col = 1 if entry["sparsity"] == 0.5 else 2
        (row,) = [r for r in rows if r[0] == entry["layer"]]
        assert row[col] == (f"{100 * entry['val_metric']:.2f} %" if entry["val_metric"] is not None else "—")
    constraints = _table(md, "## Constraints")
    assert [r[3] for r in constraints] == ["met" if c["met"] else "**NOT met**" for c in metrics["constraints"].values()]
    assert "## Runtime" in md


@requires_matplotlib
def test_html_is_self_contained_with_plots(run):
    out, metrics, _ = run
    page = (out / "report.html").read_text()
    images = page.count('<img src="data:image/png;base64,')
    assert images == 3  # stages, layers, sensitivity
    assert page.count('src="') == images and "href=" not in page and "http" not in page
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        import base64

        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert f"{metrics['size_bytes']:,}" in page


def test_html_without_matplotlib_says_so_and_keeps_the_tables(run, monkeypatch):
    from torchslim.report import _sections, render_html

    _, metrics, _ = run
    monkeypatch.setattr(_sections, "plots_available", lambda: False)
    page = render_html(metrics, "digits-test")
    assert "<img" not in page and "pip install torchslim[report]" in page
    assert page.count("<table>") == 5  # summary, stages, layers, sensitivity, constraints


def _latency_metrics(runtime, method, params=100, int8_kernels=None):
    return {"baseline_latency_ms": {"batch_1": 0.10, "batch_64": 1.0}, "latency_ms": {"batch_1": 0.12, "batch_64": 0.9},
            "runtime": runtime, "params": params, "baseline_params": 100, "int8_kernels": int8_kernels,
            "stages": [{"stage": "train"}, {"stage": "quantize", "method": method}]}


def test_a_slower_compressed_model_is_explained_by_what_made_it_slower():
    from torchslim.report import slowdown_reason

    simulated = slowdown_reason(_latency_metrics("torch", "static"))
    assert simulated.startswith("Slower than the baseline at batch 1: runtime `torch` simulates int8")
    assert "the same dense arithmetic" in slowdown_reason(_latency_metrics("torch", "kmeans"))
    assert "fp32 export" in slowdown_reason(_latency_metrics("onnxruntime", "kmeans"))
    assert "per-call overhead" in slowdown_reason(_latency_metrics("torch", "kmeans", params=50))
    # eval has no stage records: the methods come from the artifact's recorded recipe
    evaluated = {**_latency_metrics("torch", "static"), "stages": [], "quantize_methods": ["static"]}
    assert "runtime `torch` simulates int8" in slowdown_reason(evaluated)
    # int8 kernels ran: the baseline's fp32 export, timed in ONNX Runtime beside it, says which share is slower
    int8 = {**_latency_metrics("onnxruntime", "static", int8_kernels={"QGemm": 2}),
            "latency_spread": {"batch_64": {"runtime_ratio": 1.15, "compression_ratio": 0.77}}}
    int8["latency_ms"]["batch_64"] = 1.1
    assert slowdown_reason(int8).startswith("Slower than the baseline at batch 1 and batch 64: in ONNX Runtime the "
                                            "int8 graph runs at 0.77x the speed of the baseline's own fp32 export")
    int8["latency_spread"]["batch_64"] = {"runtime_ratio": 0.6, "compression_ratio": 1.5}
    assert "fp32 export at 0.60x torch's speed at batch 64, and int8 wins back only 1.50x" in slowdown_reason(int8)
    # both slower (a model mostly in a float LSTM): the larger loss is named
    int8["latency_spread"]["batch_64"] = {"runtime_ratio": 0.82, "compression_ratio": 0.99}
    assert "fp32 export at 0.82x torch's speed at batch 64, and the int8 graph at 0.99x that" in slowdown_reason(int8)
    faster = _latency_metrics("onnxruntime", "static", int8_kernels={"QGemm": 2})
    faster["latency_ms"]["batch_1"] = 0.05
    assert slowdown_reason(faster) is None
    # the float ops ONNX Runtime runs between int8 ones, where it has no int8 kernel, are named
    int8["latency_spread"]["batch_64"] = {"runtime_ratio": 1.15, "compression_ratio": 0.77}
    int8["float_ops_in_int8"] = {"Mul": 7, "HardSigmoid": 5}
    assert "export at batch 64: it computes Mul ×7, HardSigmoid ×5 in float between its int8 ops" in slowdown_reason(int8)


def test_an_int8_model_slower_than_the_fp32_export_is_explained_though_faster_than_torch():
    """The speed-up over torch is then the runtime's: the report says so, and why the int8 graph is slower."""
    from torchslim.report import int8_slowdown_reason

    m = {**_latency_metrics("onnxruntime", "static", int8_kernels={"QLinearConv": 14}),
         "float_ops_in_int8": {"HardSigmoid": 7, "Mul": 7}}
    m["latency_ms"] = {"batch_1": 0.05, "batch_64": 0.9}  # faster than torch at both batches
    m["latency_spread"] = {"batch_64": {"runtime_ratio": 2.16, "compression_ratio": 0.51,
                                        "compression_significant": True}}
    note = int8_slowdown_reason(m)
    assert note.startswith("Faster than the baseline through the runtime only: ONNX Runtime runs the baseline's "
                           "fp32 export at 2.16x torch's speed at batch 64 and the int8 graph at 0.51x that: it "
                           "computes HardSigmoid ×7, Mul ×7 in float")
    m["latency_spread"]["batch_64"]["compression_significant"] = False  # within the rounds' noise: no note
    assert int8_slowdown_reason(m) is None
    m["latency_spread"]["batch_64"].update(compression_ratio=1.3, compression_significant=True)
    assert int8_slowdown_reason(m) is None
    m["latency_spread"]["batch_64"]["compression_ratio"] = 0.8
    m["float_ops_in_int8"] = {}
    assert "converting activations to and from int8 costs more" in int8_slowdown_reason(m)
    m["latency_ms"]["batch_64"] = 1.2  # slower than torch too: the slowdown's own note says it, once
    assert int8_slowdown_reason(m) is None
    # the report's runtime section lists them
    full = {**m, "int8_kernels": {"QLinearConv": 14}, "float_ops_in_int8": {"Gelu": 4}, "cpu_features": {}}
    from torchslim.report import runtime_markdown

    assert "Between them, in float: Gelu ×4 (each with a conversion from int8 before it or back to int8 after it)." in \
        runtime_markdown(full)


def test_layer_table_lists_every_weight_matrix_of_a_float_model():
    """Attention's in-projection, embeddings, recurrent matrices and any convolution are rows too (a ViT's
    largest matrices were missing from the table)."""
    from torchslim.report._layers import layer_stats

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.rnn = nn.GRU(8, 4, batch_first=True)
            self.up = nn.ConvTranspose1d(4, 3, 2)
            self.head = nn.Linear(3, 2)

    model = Mixed()
    with torch.no_grad():
        model.attn.in_proj_weight[:5] = 0
    rows = {r["name"]: r for r in layer_stats(model, {})}
    assert list(rows) == ["embed", "attn.in_proj_weight", "attn.out_proj", "rnn.weight_ih_l0", "rnn.weight_hh_l0",
                          "up", "head"]
    assert rows["attn.in_proj_weight"]["shape"] == [24, 8] and rows["attn.in_proj_weight"]["nonzero"] == 24 * 8 - 40
    assert rows["attn.in_proj_weight"]["kind"] == "MultiheadAttention" and rows["rnn.weight_hh_l0"]["shape"] == [12, 4]
    assert rows["up"]["kind"] == "ConvTranspose1d" and all(r["bits"] == 32 for r in rows.values())


def test_layer_table_lists_a_coded_recurrent_layers_matrices_as_decoded():
    """A k-means coded GRU's matrices are rows of their own (they were missing): decoded shape, nonzeros, bits."""
    from torchslim.quantize import KMeansConfig, quantize_
    from torchslim.quantize._layout import describe_quantized_layers
    from torchslim.report._layers import layer_stats

    torch.manual_seed(0)
    model = nn.Sequential(nn.GRU(6, 4, batch_first=True), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight_hh_l0[:, :2] = 0  # 24 of the 48 entries
    quantize_(model, KMeansConfig(bits=2))
    rows = {r["name"]: r for r in layer_stats(model, {"quantization": {"layers": describe_quantized_layers(model)}})}
    assert list(rows) == ["0.weight_ih_l0", "0.weight_hh_l0", "1"]
    hh = rows["0.weight_hh_l0"]
    assert hh["kind"] == "GRU" and hh["shape"] == [12, 4] and hh["bits"] == 2
    decoded = model[0].weight_sources["weight_hh_l0"]()
    assert hh["nonzero"] == int(torch.count_nonzero(decoded)) and hh["nonzero"] <= 24 + 12  # zeros kept (pruned)
