"""Weight-only and k-means quantization store recurrent layers' matrices in codes; torch's kernel runs them."""

import pytest
import torch
from torch import nn

from torchslim.artifact import load_artifact, save_artifact
from torchslim.evaluate import count_params
from torchslim.quantize import KMeansConfig, StaticConfig, WeightOnlyConfig, quantize_
from torchslim.quantize.deploy import decode_for_inference_
from torchslim.quantize.modules import QuantizedRecurrent


class Seq(nn.Module):
    """(N, 6, 8) sequences -> a 2-layer bidirectional recurrent layer -> mean over the steps -> 3 classes."""

    def __init__(self, kind: str = "LSTM"):
        super().__init__()
        self.rnn = getattr(nn, kind)(8, 16, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out.mean(1))


def _plain_twin(plain: nn.Module, quantized: nn.Module, recurrent: str) -> nn.Module:
    """``plain`` (a float model of the same class) given the weights ``quantized`` decodes: its recurrent layer's
    matrices, that layer's float biases and the head's."""
    layer = quantized.get_submodule(recurrent)
    plain.load_state_dict({**{f"{recurrent}.{n}": s().detach() for n, s in layer.weight_sources.items()},
                           **{f"{recurrent}.{k}": v for k, v in layer.rnn.state_dict().items()},
                           **{f"head.{k}": v for k, v in quantized.head.to_float().state_dict().items()}})
    return plain


def _model(kind, seed=0):
    torch.manual_seed(seed)
    return Seq(kind).eval()


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("config", [KMeansConfig(bits=4, finetune=None), WeightOnlyConfig(bits=4)],
                         ids=["kmeans", "weight"])
def test_recurrent_matrices_are_stored_in_codes_and_run_by_torchs_kernel(kind, config, tmp_path):
    model, x = _model(kind), torch.randn(5, 6, 8)
    matrices = {n: p.detach().clone() for n, p in model.rnn.named_parameters() if n.startswith("weight_")}
    assert len(matrices) == 8
    report = quantize_(model, config)
    assert set(report.layers) == {"rnn", "head"} and not report.float_layers
    assert isinstance(model.rnn, QuantizedRecurrent) and set(model.rnn.weight_sources) == set(matrices)
    assert not any(k.rpartition(".")[2] in matrices for k in model.state_dict())  # no float matrix is kept
    fp32 = sum(m.numel() * 4 for m in matrices.values()) + 32 * 3 * 4
    assert report.weight_bytes_fp32 == fp32 and report.weight_bytes_quantized < fp32 / 5
    decoded = {n: s().detach() for n, s in model.rnn.weight_sources.items()}
    for name, before in matrices.items():
        assert float((decoded[name] - before).abs().max()) < 0.3 * float(before.abs().max())
    plain = _plain_twin(_model(kind, seed=1), model, "rnn")  # torch's own layer with the decoded matrices
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=1e-6)

    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_recurrent:Seq"})
    loaded, _ = load_artifact(path, model=_model(kind, seed=2))
    assert isinstance(loaded.rnn, QuantizedRecurrent)
    assert count_params(loaded)[0] == count_params(_model(kind))[0]  # each matrix by its logical elements
    served = decode_for_inference_(loaded)
    assert type(served.rnn) is getattr(nn, kind)
    assert [n for n, _ in served.rnn.named_parameters()] == [n for n, _ in _model(kind).rnn.named_parameters()]
    with torch.no_grad():
        torch.testing.assert_close(served(x), expected, rtol=0, atol=1e-6)

    from torchslim.artifact._inspect import describe_artifact

    described = describe_artifact(path)
    rows = {row["name"]: row for row in described["layers"]}
    row = rows["rnn.weight_ih_l1"]
    assert (row["params"], row["bits"]) == (matrices["weight_ih_l1"].numel(), 4)
    assert described["totals"]["params"] == count_params(_model(kind))[0]


def test_kmeans_fine_tuning_moves_the_centroids_through_the_recurrent_kernel():
    model, x, y = _model("LSTM"), torch.randn(16, 6, 8), torch.randint(0, 3, (16,))

    def finetune(m, epochs, lr):
        optimizer = torch.optim.SGD(m.parameters(), lr=lr)
        m.train()
        for _ in range(epochs):
            optimizer.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            optimizer.step()

    quantize_(model, KMeansConfig(bits=3, finetune=None))
    before = {n: s.centroids.detach().clone() for n, s in model.rnn.weight_sources.items()}
    codes = {n: s.indices().clone() for n, s in model.rnn.weight_sources.items()}
    finetune(model, 3, 0.5)
    for name, source in model.rnn.weight_sources.items():
        assert not torch.equal(source.centroids, before[name])  # trained ...
        assert torch.equal(source.indices(), codes[name])  # ... and the assignment kept
        assert torch.unique(source().detach()).numel() <= 8


def test_static_int8_keeps_a_recurrent_layer_float_and_says_why():
    model, x = _model("GRU"), torch.randn(16, 6, 8)
    report = quantize_(model, StaticConfig(), calibration=[x])
    assert report.float_layers["rnn"] == ("a recurrent layer: the int8 methods keep its gates float (ONNX Runtime "
                                          "has int8 kernels for LSTM only; weight-only, k-means and qat below 8 "
                                          "bits store them in codes)")
    model = _model("LSTM")
    report = quantize_(model, StaticConfig(), calibration=[x])
    assert report.float_layers["rnn"].startswith("a recurrent layer: static int8 and 8-bit qat keep its gates float")


def test_dynamic_int8_runs_an_lstm_in_int8_in_onnx_runtime_and_stores_its_codes_once(tmp_path):
    """A 2-layer bidirectional LSTM: its eight matrices become int8 codes (per row, symmetric), ONNX Runtime runs
    them in DynamicQuantizeLSTM, and the artifact holds each code once (the int8 graph is stored without them)."""
    import torchslim
    from torchslim.artifact import artifact_size
    from torchslim.export import quantized_kernels
    from torchslim.quantize import DynamicConfig
    from torchslim.quantize._layout import strip_int8_weights

    model, x = _model("LSTM"), torch.randn(32, 6, 8)
    matrices = {n: p.detach().clone() for n, p in model.rnn.named_parameters() if n.startswith("weight_")}
    with torch.no_grad():
        fp32_out = model(x)
    fp32_bytes = artifact_size(save_artifact(model, tmp_path / "fp32", architecture={"module": "test_recurrent:Seq"}))
    report = quantize_(model, DynamicConfig(), calibration=[x])
    assert report.layers == {"head": 8, "rnn": 8} and report.float_layers == {}
    assert quantized_kernels(report.onnx_model) == {"DynamicQuantizeLSTM": 2, "DynamicQuantizeMatMul": 1}
    assert isinstance(model.rnn, QuantizedRecurrent) and set(model.rnn.weight_sources) == set(matrices)
    for name, before in matrices.items():  # symmetric per row: within half a step of max|row| / 127
        step = before.abs().amax(dim=1, keepdim=True) / 127
        error = (model.rnn.weight_sources[name]().detach() - before).abs()
        assert bool((error <= step / 2 + 1e-7).all()) and float(error.max()) > 0
    assert report.weight_bytes_fp32 == sum(m.numel() * 4 for m in matrices.values()) + 32 * 3 * 4
    assert report.weight_bytes_quantized < report.weight_bytes_fp32 / 3  # a scale per row of 8 or 16 weights
    ort = report.ort_session(1)(x)
    with torch.no_grad():
        simulated = model(x)  # int8 weights, float activations: ONNX Runtime also quantizes input and hidden state
    scale = float(fp32_out.abs().max())
    assert float((ort - simulated).abs().max()) < 0.02 * scale and float((ort - fp32_out).abs().max()) < 0.02 * scale
    # stored once: the graph's int8 LSTM matrices are rebuilt from the layer's codes (and its biases)
    _, shared = strip_int8_weights(report.onnx_model, model)
    kinds = [spec.get("part") for spec in shared["initializers"].values() if "rnn_codes" in spec]
    assert sorted(kinds) == ["R", "R", "W", "W"]
    path = save_artifact(model, tmp_path / "int8", architecture={"module": "test_recurrent:Seq"})
    # (this LSTM's rows are 8 and 16 weights long: a scale per row, and the graph, weigh on its small file)
    assert artifact_size(path) < fp32_bytes / 1.9
    served = torchslim.load(path, runtime="onnxruntime", model=_model("LSTM", seed=3), intra_op_threads=1)
    torch.testing.assert_close(served(x), ort, rtol=0, atol=0)
    reloaded, _ = load_artifact(path, model=_model("LSTM", seed=4))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), simulated, rtol=0, atol=0)
    # an ignored LSTM stays float in both worlds, said as ignored
    model = _model("LSTM")
    report = quantize_(model, DynamicConfig(ignore=("rnn",)), calibration=[x])
    assert report.layers == {"head": 8} and report.float_layers == {"rnn": "ignored by the config"}
    assert quantized_kernels(report.onnx_model) == {"DynamicQuantizeMatMul": 1}


class TokenLSTM(nn.Module):
    """Token ids -> embedding -> LSTM -> a head tied to the embedding table (a language model's shape)."""

    def __init__(self):
        super().__init__()
        self.embed, self.lstm = nn.Embedding(20, 12), nn.LSTM(12, 12, batch_first=True)
        self.head = nn.Linear(12, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(self.lstm(self.embed(x))[0][:, -1])


def test_a_recurrent_layer_beside_a_tied_weight_reloads(tmp_path):
    torch.manual_seed(0)
    model, x = TokenLSTM().eval(), torch.randint(0, 20, (4, 5))
    report = quantize_(model, WeightOnlyConfig(bits=8))
    assert set(report.layers) == {"embed", "lstm", "head"}
    with torch.no_grad():
        expected = model(x)
    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_recurrent:TokenLSTM"})
    loaded, _ = load_artifact(path, model=TokenLSTM())
    assert loaded.head.weight_source is loaded.embed.weight_source
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


class Steps(nn.Module):
    """(N, 6, 8) sequences stepped through a recurrent cell by the model's own loop -> 3 classes."""

    def __init__(self, kind: str = "GRUCell"):
        super().__init__()
        self.cell = getattr(nn, kind)(8, 16)
        self.has_memory = kind == "LSTMCell"  # the cell may be a wrapper that decodes its matrices
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        state = x.new_zeros(x.shape[0], 16)
        memory = state
        for t in range(x.shape[1]):
            if self.has_memory:
                state, memory = self.cell(x[:, t], (state, memory))
            else:
                state = self.cell(x[:, t], state)
        return self.head(state)


def _steps(kind, seed=0):
    torch.manual_seed(seed)
    return Steps(kind).eval()


@pytest.mark.parametrize("kind", ["GRUCell", "LSTMCell", "RNNCell"])
def test_a_recurrent_cell_is_stored_in_codes_and_kept_float_by_int8_in_both_runtimes(kind, tmp_path):
    from torchslim.export import quantized_kernels
    from torchslim.quantize import DynamicConfig

    model, x = _steps(kind), torch.randn(5, 6, 8)
    matrices = {n: p.detach().clone() for n, p in model.cell.named_parameters() if n.startswith("weight_")}
    report = quantize_(model, WeightOnlyConfig(bits=4))
    assert set(report.layers) == {"cell", "head"} and not report.float_layers
    assert isinstance(model.cell, QuantizedRecurrent) and set(model.cell.weight_sources) == set(matrices)
    plain = _plain_twin(_steps(kind, seed=1), model, "cell")  # torch's own cell with the decoded matrices
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=1e-6)
    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_recurrent:Steps"})
    served = decode_for_inference_(load_artifact(path, model=_steps(kind, seed=2))[0])
    assert type(served.cell) is getattr(nn, kind)
    assert [n for n, _ in served.cell.named_parameters()] == [n for n, _ in _steps(kind).cell.named_parameters()]
    with torch.no_grad():
        torch.testing.assert_close(served(x), expected, rtol=0, atol=1e-6)

    # dynamic int8: the cell's products stay float in ONNX Runtime as in the torch model (its graph unrolls the
    # loop into products ORT would otherwise quantize), so the two compute the same model
    model = _steps(kind)
    report = quantize_(model, DynamicConfig(), calibration=[x])
    assert set(report.layers) == {"head"} and report.float_layers["cell"].startswith("a recurrent cell")
    assert quantized_kernels(report.onnx_model) == {"DynamicQuantizeMatMul": 1}
    with torch.no_grad():
        torch.testing.assert_close(report.ort_session(1)(x), model(x), rtol=0, atol=1e-5)
