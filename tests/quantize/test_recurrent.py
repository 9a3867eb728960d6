"""Recurrent layers through int8: left float and named, and their weights stored once although the ONNX graph
holds them with its own gate order."""

import importlib.util

import pytest
import torch

from torchslim.artifact import load_artifact, read_manifest, save_artifact
from torchslim.quantize import CalibrationConfig, StaticConfig, quantize_

requires_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")


class Recurrent(torch.nn.Module):
    """Rows of an 8x8 image through a two-layer GRU and a bidirectional LSTM."""

    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(8, 16, num_layers=2, batch_first=True)
        self.lstm = torch.nn.LSTM(16, 12, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(24, 10)

    def forward(self, x):  # (N, 8, 8)
        return self.head(self.lstm(self.gru(x)[0])[0][:, -1])


@requires_ort
def test_recurrent_weights_are_stored_once_in_an_int8_artifact(tmp_path):
    from torchslim.export.runtime import OrtSession
    from torchslim.quantize._layout import compact_onnx, int8_onnx_of

    torch.manual_seed(0)
    model = Recurrent().eval()
    batches = [(torch.randn(16, 8, 8), torch.randint(0, 10, (16,))) for _ in range(2)]
    report = quantize_(model, StaticConfig(calibration=CalibrationConfig(batches=2)), calibration=batches)
    assert set(report.float_layers) == {"gru", "lstm"} and set(report.layers) == {"head"}
    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_recurrent.Recurrent"},
                         extra={"input_shape": [8, 8]})
    shared = read_manifest(path)["quantization"]["int8_onnx_weights"]["initializers"].values()
    # W, R and B of each of the GRU's two layers and of the LSTM's one (both directions in one initializer)
    assert sorted((s["rnn"], s["rnn_layer"], s["part"]) for s in shared if "rnn" in s) == [
        ("gru", layer, part) for layer in (0, 1) for part in "BRW"] + [("lstm", 0, part) for part in "BRW"]
    recurrent_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if not n.startswith("head"))
    assert (path / "model.int8.onnx.zst").stat().st_size < recurrent_bytes / 4  # the graph, not its weights
    loaded, _ = load_artifact(path, model=Recurrent())
    assert int8_onnx_of(loaded) == compact_onnx(int8_onnx_of(model))  # rebuilt from the state dict, exactly
    x = torch.randn(5, 8, 8)
    assert torch.equal(OrtSession(int8_onnx_of(loaded), 1)(x), OrtSession(int8_onnx_of(model), 1)(x))
