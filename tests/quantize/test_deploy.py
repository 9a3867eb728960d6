"""A model loaded for inference is plain PyTorch: decoded weights in ordinary layers, torch's own attention."""

import statistics
import time

import pytest
import torch
from torch import nn

import torchslim
from model_zoo import TinyEncoder
from torchslim.artifact import load_artifact, save_artifact
from torchslim.models import LeNet300100
from torchslim.prune import MagnitudeConfig, prune_
from torchslim.quantize import KMeansConfig, QuantizedLayer, StaticConfig, WeightOnlyConfig, quantize_
from torchslim.quantize.attention import ProjectedMultiheadAttention

PLAIN = (nn.Linear, nn.ReLU, nn.Flatten, nn.Sequential, LeNet300100)


def _demo_like(tmp_path):
    """The demo's shipped model: a 64-90-30-10 student, 70 % pruned, 4-bit k-means."""
    torch.manual_seed(0)
    model = LeNet300100(hidden1=90, hidden2=30).eval()
    prune_(model, MagnitudeConfig(sparsity=0.7))
    quantize_(model, KMeansConfig(bits=4))
    path = save_artifact(model, tmp_path / "a", architecture={"name": "lenet300_100",
                                                              "kwargs": {"hidden1": 90, "hidden2": 30}})
    return model, path


def _best_time(model, x, calls=400, trials=9):
    times = []
    with torch.no_grad():
        for _ in range(trials):
            start = time.perf_counter()
            for _ in range(calls):
                model(x)
            times.append(time.perf_counter() - start)
    return min(times)


def test_loaded_kmeans_demo_model_has_no_wrappers_and_runs_as_fast_as_a_plain_one(tmp_path, one_thread):
    model, path = _demo_like(tmp_path)
    loaded = torchslim.load(path)
    assert {type(m) for m in loaded.modules()} <= set(PLAIN)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in loaded.modules())
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert float((loaded.fc2.weight == 0).float().mean()) == pytest.approx(0.7, abs=0.01)
    plain = LeNet300100(hidden1=90, hidden2=30).eval()
    for m in (loaded, plain):  # warm up both
        _best_time(m, x, calls=50, trials=2)
    # back-to-back pairs, the order alternating: a busy period slows both of a pair, so the median of the pairs'
    # ratios holds where the best of each side alone can come from different periods
    ratios = []
    for round_ in range(31):
        pair = (loaded, plain) if round_ % 2 == 0 else (plain, loaded)
        times = {id(m): _best_time(m, x, calls=200, trials=1) for m in pair}
        ratios.append(times[id(loaded)] / times[id(plain)])
    assert statistics.median(ratios) <= 1.10, sorted(ratios)


def test_load_for_inference_turns_attention_back_into_torchs_own(tmp_path):
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    quantize_(model, WeightOnlyConfig(bits=8))
    assert isinstance(model.encoder.layers[0].self_attn, ProjectedMultiheadAttention)
    path = save_artifact(model, tmp_path / "a", architecture={"name": "lenet300_100"})  # name unused below
    rebuilt, _ = _rebuild_tiny_encoder(path)
    x = torch.randn(4, 5, 16)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(rebuilt(x), ref)  # the artifact as stored: projected attention, quantized layers
        from torchslim.quantize.deploy import decode_for_inference_

        deployed = decode_for_inference_(rebuilt)
        assert type(deployed.encoder.layers[0].self_attn) is nn.MultiheadAttention
        assert not any(isinstance(m, QuantizedLayer) for m in deployed.modules())
        assert torch.allclose(deployed(x), ref, atol=1e-5)


def _rebuild_tiny_encoder(path):
    """load_artifact's rebuild steps for a model no factory names (TinyEncoder lives in the tests)."""
    from torchslim.artifact._format import _decode_state, _open
    from torchslim.quantize._layout import rebuild_quantized_layers_, rebuild_structure_, sync_attention_heads_

    manifest, data, _ = _open(path)
    state = _decode_state(path, manifest, data)
    model = TinyEncoder().eval()
    rebuild_structure_(model, manifest["structure"])
    sync_attention_heads_(model)
    rebuild_quantized_layers_(model, manifest["quantization"]["layers"])
    model.load_state_dict(state)
    return model.eval(), manifest


def test_int8_layers_keep_their_activation_quantizers_when_loaded(tmp_path):
    torch.manual_seed(0)
    model = LeNet300100(hidden1=16, hidden2=8).eval()
    batches = [torch.rand(32, 1, 8, 8) for _ in range(2)]
    quantize_(model, StaticConfig(), calibration=batches)
    path = save_artifact(model, tmp_path / "a", architecture={"name": "lenet300_100",
                                                              "kwargs": {"hidden1": 16, "hidden2": 8}})
    loaded = torchslim.load(path)
    assert all(isinstance(getattr(loaded, n), QuantizedLayer) for n in ("fc1", "fc2", "fc3"))
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert load_artifact(path)[0].fc1.input_quant is not None
