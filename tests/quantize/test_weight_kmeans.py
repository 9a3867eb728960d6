import pytest
import torch

from model_zoo import TinyEncoder
from quant_models import MLP, image_batches, relative_error
from torchslim._errors import ConfigError
from torchslim.quantize import (CodebookWeight, FinetuneConfig, KMeansConfig, PackedWeight, PerChannel,
                                QuantizedLayer, WeightOnlyConfig, cluster_weight, quantize_, quantize_tensor)


def test_weight_only_stores_packed_integers(mlp):
    x = torch.randn(32, 64)
    ref = mlp(x).detach()
    report = quantize_(mlp, WeightOnlyConfig(bits=4, granularity="group", group_size=4, symmetric=True))
    assert report.layers == {"fc1": 4, "fc2": 4, "fc3": 4}
    for name in report.layers:
        source = mlp.get_submodule(name).weight_source
        assert isinstance(source, PackedWeight)
        assert source.packed.dtype == torch.uint8
        assert source.packed.numel() == (torch.Size(source.shape).numel() + 1) // 2  # two codes per byte
    # 4-bit codes + one fp32 scale and one uint8 zero point per group of 4 weights
    assert report.weight_bytes_quantized / report.weight_bytes_fp32 == pytest.approx((0.5 + 5 / 4) / 4, rel=0.01)
    assert relative_error(mlp(x).detach(), ref) < 0.12


def test_weight_only_matches_reference_quantizer_and_overrides(mlp):
    w = mlp.fc1.weight.detach().clone()
    quantize_(mlp, WeightOnlyConfig(bits=8, overrides={"fc1": 3}, ignore=["re:fc[3]"]))
    assert isinstance(mlp.fc3, torch.nn.Linear)  # ignored: still fp32
    assert mlp.fc1.weight_source.bits == 3 and mlp.fc2.weight_source.bits == 8
    assert torch.equal(mlp.fc1.weight, quantize_tensor(w, 3, mlp.fc1.weight_source.granularity).dequantize())


def test_override_of_unknown_layer_is_an_error(mlp):
    with pytest.raises(ConfigError) as err:
        quantize_(mlp, WeightOnlyConfig(bits=4, overrides={"fc9": 2}))
    assert err.value.field == "overrides.fc9"  # as pruning names it


def test_weight_only_conv_and_group_size_error(lenet):
    x = image_batches(1)[0]
    ref = lenet(x).detach()
    quantize_(lenet, WeightOnlyConfig(bits=8, granularity="channel"))
    assert relative_error(lenet(x).detach(), ref) < 0.01
    with pytest.raises(ConfigError) as err:
        quantize_(torch.nn.Sequential(torch.nn.Linear(30, 4)), WeightOnlyConfig(bits=4, granularity="group",
                                                                                 group_size=8))
    assert err.value.field == "group_size"
    three = torch.nn.Sequential(torch.nn.Linear(30, 4), torch.nn.Linear(4, 18), torch.nn.Linear(18, 8),
                                torch.nn.Linear(8, 3))  # rows of 8 fit
    with pytest.raises(ConfigError) as err:  # every layer it does not fit, in one message
        quantize_(three, WeightOnlyConfig(bits=4, granularity="group", group_size=8))
    assert err.value.message == ("must divide the row length of every quantized layer, got 8: 0 has rows of 30, "
                                 "1 has rows of 4, 2 has rows of 18 (or ignore them)")


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_keeps_zeros_and_limits_distinct_values(mlp, bits):
    with torch.no_grad():
        for layer in (mlp.fc1, mlp.fc2, mlp.fc3):
            layer.weight[torch.rand_like(layer.weight) < 0.6] = 0.0  # pruned
    zeros = {n: mlp.get_submodule(n).weight == 0 for n in ("fc1", "fc2", "fc3")}
    quantize_(mlp, KMeansConfig(bits=bits))
    for name, mask in zeros.items():
        w = mlp.get_submodule(name).weight.detach()
        assert bool((w[mask] == 0).all())
        assert torch.unique(w).numel() <= 2 ** bits


def test_kmeans_is_deterministic_and_beats_linear_quantization_at_3_bits():
    torch.manual_seed(0)
    w = torch.randn(128, 128)
    c1, i1 = cluster_weight(w, 3)
    c2, i2 = cluster_weight(w, 3)
    assert torch.equal(c1, c2) and torch.equal(i1, i2)
    km = torch.cat([torch.zeros(1), c1])[i1.long()]
    affine = quantize_tensor(w, 3).dequantize()
    assert (km - w).pow(2).mean() < 0.6 * (affine - w).pow(2).mean()


def test_kmeans_centroid_gradient_is_sum_of_shared_weight_gradients():
    torch.manual_seed(0)
    w = torch.randn(6, 10)
    w[0, :3] = 0
    centroids, indices = cluster_weight(w, 2)
    source = CodebookWeight(centroids, indices, 2)
    layer = QuantizedLayer(torch.nn.Linear(10, 6), source)
    x = torch.randn(5, 10)
    layer(x).pow(2).sum().backward()
    weight = layer.weight.detach().requires_grad_(True)
    torch.nn.functional.linear(x, weight, layer.bias.detach()).pow(2).sum().backward()
    expected = torch.zeros(4).index_add_(0, indices.reshape(-1).long(), weight.grad.reshape(-1))[1:]
    assert torch.allclose(source.centroids.grad, expected, atol=1e-5)


def test_kmeans_finetune_moves_centroids_only_and_keeps_sharing(mlp):
    seen = {}

    def finetune(model, epochs, lr):
        seen.update(epochs=epochs, lr=lr)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
        for _ in range(epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    quantize_(mlp, KMeansConfig(bits=2))
    before = mlp.fc1.weight_source.centroids.detach().clone()
    torch.manual_seed(0)
    mlp2 = MLP().eval()  # same weights as the fixture
    quantize_(mlp2, KMeansConfig(bits=2, finetune=FinetuneConfig(epochs=3, lr=0.1)), finetune=finetune)
    assert seen == {"epochs": 3, "lr": 0.1}
    assert torch.unique(mlp2.fc1.weight.detach()).numel() <= 4
    assert not torch.equal(mlp2.fc1.weight_source.centroids.detach(), before)


def test_transformer_encoder_quantizes_both_attention_projections():
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x = torch.randn(8, 5, 16)
    ref = model(x).detach()
    report = quantize_(model, WeightOnlyConfig(bits=8))
    attention = model.encoder.layers[0].self_attn
    assert isinstance(attention.out_proj, QuantizedLayer) and attention.out_proj.kind == "Linear"
    assert isinstance(attention.in_proj, QuantizedLayer) and attention.in_proj.weight.shape == (48, 16)
    assert set(report.layers) == {"encoder.layers.0.self_attn.in_proj", "encoder.layers.0.self_attn.out_proj",
                                  "encoder.layers.0.linear1", "encoder.layers.0.linear2", "head"}
    with torch.no_grad():
        assert relative_error(model(x), ref) < 0.01


def test_ignoring_a_block_keeps_every_layer_inside_it_float():
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    report = quantize_(model, WeightOnlyConfig(bits=4, ignore=["encoder.layers.0"]))
    assert set(report.layers) == {"head"} and len(report.kept_fp32) == 4
    assert set(report.float_layers.values()) == {"ignored by the config"}


def test_circular_padding_conv_is_left_float():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"),
                                torch.nn.Conv2d(4, 4, 3))
    report = quantize_(model, WeightOnlyConfig(bits=4))
    assert report.layers == {"1": 4} and report.kept_fp32 == ()  # kept_fp32 lists quantizable layers only
    assert isinstance(model[0], torch.nn.Conv2d)


class _RowGRU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.head = torch.nn.GRU(8, 16, batch_first=True), torch.nn.Linear(16, 10)

    def forward(self, x):  # (N, 8, 8): 8 rows of 8 pixels
        return self.head(self.gru(x)[0][:, -1])


def test_a_recurrent_layer_is_coded_too():  # its matrices each get a codebook (tests/quantize/test_recurrent.py)
    model = _RowGRU().eval()
    report = quantize_(model, KMeansConfig(bits=4))
    assert report.layers == {"gru": 4, "head": 4} and report.float_layers == {}


def _cached_layer():
    torch.manual_seed(0)
    layer = QuantizedLayer(torch.nn.Linear(8, 4), PackedWeight(torch.randn(4, 8), 4, PerChannel())).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        layer(x)  # decodes and caches the weight
    assert layer._inference_weight is not None
    return layer, x


def test_decoded_weight_follows_dtype_and_device_changes():
    layer, x = _cached_layer()
    layer.double()
    with torch.no_grad():
        out = layer(x.double())
    assert out.dtype == torch.float64 and layer._inference_weight.dtype == torch.float64


def test_decoded_weight_follows_in_place_edits_of_the_source():
    layer, x = _cached_layer()
    with torch.no_grad():
        layer.weight_source.scale.mul_(2.0)
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight_source(), layer.bias))
    codebook = QuantizedLayer(torch.nn.Linear(8, 4), CodebookWeight(*cluster_weight(torch.randn(4, 8), 2), 2)).eval()
    with torch.no_grad():
        codebook(x)
        codebook.weight_source.centroids.add_(1.0)
        assert torch.allclose(codebook(x), torch.nn.functional.linear(x, codebook.weight_source(), codebook.bias))


def test_decoded_weight_follows_a_new_weight_source():
    layer, x = _cached_layer()
    new = PackedWeight(torch.randn(4, 8), 8, PerChannel())
    layer.weight_source = new
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, new(), layer.bias))
