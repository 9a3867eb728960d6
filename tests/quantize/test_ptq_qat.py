"""Static/dynamic int8 through ONNX Runtime, QAT, and the accuracy-aware fallback."""

import functools

import pytest
import torch
from torch import nn

from torch.utils.data import DataLoader, TensorDataset

from quant_models import MLP, LeNet5, image_batches, relative_error, requires_ort
from torchslim._errors import ConfigError
from torchslim.export import quantized_kernels
from torchslim.quantize import (CalibrationConfig, DynamicConfig, FinetuneConfig, PackedWeight, QATConfig,
                                StaticConfig, WeightOnlyConfig, fold_conv_bn_, quantize_)


def _bn_lenet():
    torch.manual_seed(0)
    model = LeNet5(batch_norm=True).eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.uniform_(0.5, 1.5)
    return model


@requires_ort
@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_static_int8_lenet_runs_quantized_kernels_in_ort(observer):
    model = _bn_lenet()
    x = image_batches(1, 64, seed=9)[0]
    ref = model(x).detach()
    config = StaticConfig(calibration=CalibrationConfig(batches=4, observer=observer, percentile=99.9))
    report = quantize_(model, config, calibration=iter(image_batches(8)))
    assert isinstance(model.bn1, torch.nn.Identity)  # folded into conv1
    kernels = quantized_kernels(report.onnx_model)
    assert kernels.get("QLinearConv") == 2 and kernels.get("QGemm", 0) + kernels.get("QLinearMatMul", 0) == 2
    ort_out = report.ort_session(intra_op_threads=1)(x)
    assert ort_out.shape == (64, 10)
    assert relative_error(ort_out, ref) < 0.05
    # the torch model simulates the int8 model: it is as close to ORT as both are to fp32
    assert relative_error(model(x).detach(), ort_out) < 0.02  # measured 0.008-0.013
    assert (ort_out.argmax(1) == ref.argmax(1)).float().mean() > 0.9
    assert report.weight_bytes_quantized < 0.27 * report.weight_bytes_fp32


@requires_ort
def test_static_ignore_keeps_layer_float_in_ort():
    model = _bn_lenet()
    report = quantize_(model, StaticConfig(ignore=["re:.*fc2.*"]), calibration=image_batches(2))
    assert report.kept_fp32 == ("fc2",) and set(report.layers) == {"conv1", "conv2", "fc1"}
    assert isinstance(model.fc2, torch.nn.Linear)
    kernels = quantized_kernels(report.onnx_model)
    assert kernels.get("QGemm", 0) + kernels.get("QLinearMatMul", 0) == 1


@requires_ort
def test_dynamic_int8_linear_model_runs_in_ort(mlp):
    x = torch.randn(32, 64)
    ref = mlp(x).detach()
    report = quantize_(mlp, DynamicConfig(), calibration=[x[:4]])
    kernels = quantized_kernels(report.onnx_model)
    assert sum(kernels.values()) == 3, kernels  # three Linear layers on integer MatMul kernels
    ort_out = report.ort_session()(x)
    assert relative_error(ort_out, ref) < 0.03
    assert relative_error(mlp(x).detach(), ort_out) < 0.01
    with pytest.raises(ConfigError) as err:
        quantize_(MLP(), DynamicConfig())
    assert err.value.field == "calibration"


def _trainer(data, targets):
    def finetune(model, epochs, lr):
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        model.train()
        for _ in range(epochs):
            for xb, yb in zip(data.split(32), targets.split(32)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
        model.eval()
    return finetune


def _toy_task(seed=0, n=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g)
    y = (x[:, :10].argmax(1))  # learnable 10-class rule
    return x, y


@functools.lru_cache(maxsize=1)
def _trained_state():
    x, y = _toy_task()
    torch.manual_seed(0)
    model = MLP()
    _trainer(x, y)(model, 15, 1e-2)
    return model.state_dict()


def _trained_mlp():
    model = MLP().eval()
    model.load_state_dict(_trained_state())
    return model


def _accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


class _Tied(nn.Module):
    """One Linear applied twice (its weight shared by two products of the exported graph)."""

    def __init__(self):
        super().__init__()
        self.shared, self.head = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.shared(torch.relu(self.shared(x))))


@requires_ort
def test_dynamic_int8_of_a_layer_called_twice_stores_its_weight_once():
    torch.manual_seed(0)
    model, x = _Tied().eval(), torch.randn(32, 16)
    ref = model(x).detach()
    report = quantize_(model, DynamicConfig(), calibration=[x[:4]])
    import onnx

    graph = onnx.load_from_string(report.onnx_model)
    shared = [i for i in graph.graph.initializer if tuple(i.dims) == (16, 16)]
    assert len(shared) == 1  # one int8 weight for both products
    assert sum(quantized_kernels(report.onnx_model).values()) == 3  # both uses and the head multiply in int8
    assert relative_error(report.ort_session()(x), ref) < 0.03


class _CausalAttention(nn.Module):
    """Self-attention over 6 tokens with a causal mask of -inf above the diagonal (sequence first)."""

    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(4, 16), nn.MultiheadAttention(16, 2), nn.Linear(16, 3)
        self.register_buffer("mask", torch.triu(torch.full((6, 6), float("-inf")), 1))

    def forward(self, x):  # (N, 6, 4)
        h = self.embed(x).transpose(0, 1)
        a, _ = self.attn(h, h, h, attn_mask=self.mask)
        return self.head((h + a).mean(0))


@requires_ort
def test_static_int8_keeps_tensors_no_range_can_hold_float():
    # the masked attention scores hold -inf: calibration once stopped on them; their ops now stay float
    torch.manual_seed(0)
    model, x = _CausalAttention().eval(), torch.randn(64, 6, 4)
    ref = model(x).detach()
    report = quantize_(model, StaticConfig(bits=8), calibration=[x[:32], x[32:]])
    assert sum(quantized_kernels(report.onnx_model).values()) >= 4  # embed, q/k/v or out-projection, head
    assert relative_error(report.ort_session()(x), ref) < 0.05


class _QueryPooling(nn.Module):
    """A learned query attending over 6 tokens whose keys/values have a width of their own (kdim = vdim = 8)."""

    def __init__(self):
        super().__init__()
        self.embed, self.kv, self.head = nn.Linear(4, 16), nn.Linear(16, 8), nn.Linear(16, 3)
        self.query = nn.Parameter(torch.randn(1, 1, 16))
        self.pool = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)

    def forward(self, x):  # (N, 6, 4)
        h = self.embed(x)
        kv = self.kv(h)
        a, _ = self.pool(self.query.expand(len(x), -1, -1), kv, kv)
        return self.head(a[:, 0] + h.mean(1))


@requires_ort
@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_int8_keeps_an_attention_with_key_value_sizes_of_its_own_float_and_says_so(method):
    # its out-projection is called through torch's functional kernel: static calibration never saw it and stopped
    # with "no calibration data was observed"; now the attention stays float, said once, and the rest is int8
    torch.manual_seed(0)
    model, x = _QueryPooling().eval(), torch.randn(64, 6, 4)
    ref = model(x).detach()
    config = StaticConfig(bits=8) if method == "static" else DynamicConfig()
    report = quantize_(model, config, calibration=[x[:32], x[32:]])
    assert set(report.layers) == {"embed", "kv", "head"}
    assert report.float_layers == {"pool": "attention with separate key/value sizes or extra key/value biases"}
    assert sum(quantized_kernels(report.onnx_model).values()) >= 3  # embed, kv, head (ORT may take more)
    assert relative_error(report.ort_session()(x[:32]), ref[:32]) < 0.05  # the query's expand fixes the batch


def test_qat_low_bits_recovers_accuracy_and_converts_to_packed_weights():
    x, y = _toy_task()
    base = _trained_mlp()
    fp32_acc = _accuracy(base, x, y)
    assert fp32_acc > 0.9
    import copy
    ptq_model, qat_model = copy.deepcopy(base), copy.deepcopy(base)
    quantize_(ptq_model, WeightOnlyConfig(bits=2, granularity="channel", symmetric=True))
    quantize_(qat_model, QATConfig(bits=2, finetune=FinetuneConfig(epochs=8, lr=3e-3)), finetune=_trainer(x, y))
    assert isinstance(qat_model.fc1.weight_source, PackedWeight) and qat_model.fc1.weight_source.bits == 2
    qat_acc, ptq_acc = _accuracy(qat_model, x, y), _accuracy(ptq_model, x, y)
    assert qat_acc >= fp32_acc - 0.02 and qat_acc > ptq_acc + 0.05, (fp32_acc, ptq_acc, qat_acc)
    with pytest.raises(ConfigError) as err:
        quantize_(copy.deepcopy(base), QATConfig(bits=4))
    assert err.value.field == "finetune"


@requires_ort
def test_qat_8bit_converts_to_int8_ort(mlp):
    x, y = _toy_task()
    assert _accuracy(mlp, x, y) < 0.2  # untrained: fine-tuning moves weights and activation ranges a lot
    report = quantize_(mlp, QATConfig(bits=8, finetune=FinetuneConfig(epochs=3, lr=1e-2)),
                       calibration=[x[:64]], finetune=_trainer(x, y))
    assert sum(quantized_kernels(report.onnx_model).values()) == 3
    assert _accuracy(mlp, x, y) > 0.9
    # torch and ORT quantize each layer input with the same calibrated range (measured 0.008; 0.06 with the
    # running ranges QAT tracked while training)
    assert relative_error(mlp(x).detach(), report.ort_session()(x)) < 0.02


@requires_ort
def test_calibration_batches_may_carry_targets():
    x = torch.cat(image_batches(4, 16))
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=16)
    plain, paired = _bn_lenet(), _bn_lenet()
    quantize_(plain, StaticConfig(calibration=CalibrationConfig(batches=3)), calibration=list(x.split(16)))
    quantize_(paired, StaticConfig(calibration=CalibrationConfig(batches=3)), calibration=loader)
    assert torch.equal(plain(x), paired(x))  # the same inputs, the targets left aside
    with pytest.raises(ConfigError) as err:
        quantize_(_bn_lenet(), StaticConfig(), calibration=[{"x": x}])
    assert err.value.field == "calibration"


@requires_ort
def test_per_tensor_int8_bytes_are_what_is_stored():
    model = _bn_lenet()
    numel = sum(m.weight.numel() for m in (model.conv1, model.conv2, model.fc1, model.fc2))
    report = quantize_(model, StaticConfig(granularity="tensor"), calibration=image_batches(2))
    assert report.weight_bytes_fp32 == 4 * numel
    assert report.weight_bytes_quantized == numel + 4 * (4 + 1)  # codes + one fp32 scale and zero-point byte each


def test_fold_returns_only_the_convolutions_that_absorbed_a_batchnorm():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4, track_running_stats=False))
    assert fold_conv_bn_(model) == ["0"]
    assert isinstance(model[1], torch.nn.Identity) and isinstance(model[3], torch.nn.BatchNorm2d)


def test_accuracy_aware_fallback_keeps_the_sensitive_layer():
    x, y = _toy_task()
    model = _trained_mlp()
    with torch.no_grad():
        model.fc3.weight[0, 0] = 40.0  # an outlier makes fc3 hopeless at 2 bits per tensor

    def evaluate(m):
        return _accuracy(m, x, y)

    report = quantize_(model, WeightOnlyConfig(bits=2, granularity="tensor", max_metric_drop=0.05,
                                               overrides={"fc1": 4, "fc2": 4}), evaluate=evaluate)
    assert max(report.sensitivity, key=report.sensitivity.get) == "fc3"
    assert "fc3" in report.fallback and "fc3" in report.kept_fp32
    assert isinstance(model.fc3, torch.nn.Linear)
    assert report.baseline_metric - report.metric <= 0.05
    assert report.metric == pytest.approx(evaluate(model))
    with pytest.raises(ConfigError) as err:
        quantize_(MLP(), WeightOnlyConfig(max_metric_drop=0.01))
    assert err.value.field == "max_metric_drop"
