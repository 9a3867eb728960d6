"""The encoder graph that computes on real tokens only: same outputs, padding no longer computed, every fallback."""

import collections

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from torchslim.export import attention_fusion  # noqa: E402
from torchslim.text import SentenceEncoder  # noqa: E402
from torchslim.text.onnx import Int8Config, OrtEncoder, export_onnx, fuse, quantize_int8  # noqa: E402
from torchslim.text.token_packing import GROUPS, pack_tokens  # noqa: E402


def _encoder(heads=(2, 2), ffn=(64, 48)) -> SentenceEncoder:
    torch.manual_seed(0)
    enc = SentenceEncoder(vocab_size=100, hidden_size=32, heads=list(heads), head_dim=16, ffn=list(ffn),
                          max_positions=64).eval()
    with torch.no_grad():
        for p in enc.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    return enc


def _batch(lengths, extra_padding=0, seed=1):
    """Right-padded ids and mask for sentences of the given lengths (the same ids whatever the padding)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + extra_padding
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, 100, (n,), generator=g)
        mask[row, :n] = 1
    return ids, mask


LENGTHS = [9, 3, 7, 1, 9, 5]


@pytest.fixture(scope="module")
def fused():
    enc = _encoder()
    return enc, fuse(export_onnx(enc), enc)


def _ops(data: bytes) -> collections.Counter:
    return collections.Counter((n.domain or "ai.onnx", n.op_type) for n in onnx.load_from_string(data).graph.node)


def test_fp32_graph_gives_the_same_embeddings(fused):
    enc, graph = fused
    packed, layers = pack_tokens(graph)
    assert layers == 2
    ops = _ops(packed)
    assert ops[("com.microsoft", "Attention")] == 0  # ORT's fused node, which projects every padded position
    core = ops[("ai.onnx", "Attention")] + ops[("com.microsoft", "MultiHeadAttention")]
    assert core == 2 * GROUPS  # a layer's core runs once per group of sentences
    assert ops[("ai.onnx", "MatMul")] == 2 * 3 + 2 * 3  # q, k, v, out, FFN in, FFN out a layer
    ids, mask = _batch(LENGTHS)
    with torch.inference_mode():
        expected = enc(ids, mask)
    got = OrtEncoder(packed, 1)(ids, mask)
    assert (got - expected).abs().max().item() < 1e-5
    assert (got - OrtEncoder(graph, 1)(ids, mask)).abs().max().item() < 1e-5


def test_real_tokens_only_are_computed(fused):
    """Dynamic int8 takes one range per activation over what it computes: extra padding columns move the
    embeddings of the unpacked graph (its ranges include the padded positions), not those of the packed one."""
    enc, graph = fused
    int8 = quantize_int8(graph, Int8Config(method="dynamic"))
    packed, layers = pack_tokens(int8)
    assert layers == 2
    ops = _ops(packed)
    assert ops[("com.microsoft", "QAttention")] == 0 and ops[("ai.onnx", "MatMulInteger")] == 2 * 6
    tight, loose = _batch(LENGTHS), _batch(LENGTHS, extra_padding=20)
    session = OrtEncoder(packed, 1)
    assert (session(*tight) - session(*loose)).abs().max().item() < 1e-6
    with torch.inference_mode():
        expected = enc(*tight)
    cos = torch.nn.functional.cosine_similarity(session(*tight), expected).mean().item()
    assert cos > 0.98, cos  # int8 of this random encoder, packed or not; a wrong row order falls far below


def test_multi_head_attention_where_the_standard_op_is_missing(fused, monkeypatch):
    enc, graph = fused
    monkeypatch.setattr(attention_fusion, "runtime_has_onnx_attention", lambda: False)
    packed, layers = pack_tokens(graph)
    ops = _ops(packed)
    assert layers == 2 and ops[("ai.onnx", "Attention")] == 0
    assert ops[("com.microsoft", "MultiHeadAttention")] == 2 * GROUPS
    assert next(op.version for op in onnx.load_from_string(packed).opset_import if op.domain == "") == 17
    ids, mask = _batch(LENGTHS)
    with torch.inference_mode():
        expected = enc(ids, mask)
    assert (OrtEncoder(packed, 1)(ids, mask) - expected).abs().max().item() < 1e-5


def test_standard_attention_raises_the_opset_and_rewrites_reductions(fused):
    if not attention_fusion.runtime_has_onnx_attention():
        pytest.skip("this ONNX Runtime has no standard Attention op")
    _, graph = fused
    packed = onnx.load_from_string(pack_tokens(graph)[0])
    assert next(op.version for op in packed.opset_import if op.domain == "") == 23
    for node in packed.graph.node:  # opset 18 moved the reductions' axes to an input
        if node.op_type.startswith("Reduce"):
            assert not any(a.name == "axes" for a in node.attribute), node.name
    onnx.checker.check_model(packed)


def test_pruned_heads_and_uneven_layers(monkeypatch):
    enc = _encoder(heads=(2, 1), ffn=(64, 24))  # heads x head_dim below the hidden size, different per layer
    packed, layers = pack_tokens(fuse(export_onnx(enc), enc))
    assert layers == 2
    ids, mask = _batch(LENGTHS)
    with torch.inference_mode():
        expected = enc(ids, mask)
    assert (OrtEncoder(packed, 1)(ids, mask) - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("method", ["static", "keep_fp32"])
def test_other_int8_graphs_pack_to_the_same_embeddings(fused, method):
    """Static int8 (fixed ranges: per token exactly as before) and dynamic int8 with MatMuls kept in fp32."""
    enc, graph = fused
    if method == "static":
        config, calibration = Int8Config(method="static"), [_batch(LENGTHS, seed=s) for s in (2, 3)]
    else:
        matmuls = [n.name for n in onnx.load_from_string(graph).graph.node if n.op_type == "MatMul"]
        config, calibration = Int8Config(method="dynamic", keep_fp32=tuple(matmuls[:2])), ()
    int8 = quantize_int8(graph, config, calibration)
    packed, layers = pack_tokens(int8)
    assert layers == 2
    ids, mask = _batch(LENGTHS)
    got, want = OrtEncoder(packed, 1)(ids, mask), OrtEncoder(int8, 1)(ids, mask)
    if method == "static":
        assert (got - want).abs().max().item() < 1e-5
    else:
        assert torch.nn.functional.cosine_similarity(got, want).min().item() > 0.995


def test_graphs_it_cannot_pack_come_back_unchanged(fused):
    enc, graph = fused
    plain = export_onnx(enc)  # unfused: no attention node that projects q/k/v itself
    assert pack_tokens(plain) == (plain, 0)
    model = onnx.load_from_string(graph)
    model.graph.input[1].name = "other_mask"  # not the encoder's padding mask
    for node in model.graph.node:
        node.input[:] = ["other_mask" if i == "attention_mask" else i for i in node.input]
    data = model.SerializeToString()
    assert pack_tokens(data) == (data, 0)


def test_a_sentence_without_tokens_in_a_batch(fused):
    enc, graph = fused
    ids, mask = _batch([4, 2, 5])
    mask[1] = 0  # a row of padding only: its unpacked embedding is zero (nothing to pool)
    got = OrtEncoder(pack_tokens(graph)[0], 1)(ids, mask).numpy()
    want = OrtEncoder(graph, 1)(ids, mask).numpy()
    assert np.abs(got - want).max() < 1e-5 and np.abs(got[1]).max() == 0


@pytest.mark.parametrize("groups", [1, 2, 3, 5])
@pytest.mark.parametrize("lengths", [LENGTHS, [6], [2, 8], [3, 3, 3], [1, 9, 2, 8, 3, 7, 4]])
def test_the_core_by_groups_of_sentences_gives_the_same_embeddings(fused, groups, lengths):
    """Sentences sorted by length and cut into groups, each padded to its own longest: the same numbers for any
    number of groups, batches with fewer sentences than groups (a group left empty) and sentences of equal
    length."""
    enc, graph = fused
    packed, layers = pack_tokens(graph, groups=groups)
    assert layers == 2
    assert _ops(packed)[("ai.onnx", "Attention")] + _ops(packed)[("com.microsoft", "MultiHeadAttention")] == 2 * groups
    ids, mask = _batch(lengths)
    with torch.inference_mode():
        expected = enc(ids, mask)
    assert (OrtEncoder(packed, 1)(ids, mask) - expected).abs().max().item() < 1e-5


def test_left_padding_and_a_gap_in_the_mask(fused):
    """A sentence's real tokens need not come first: the groups read them wherever the mask puts them."""
    enc, graph = fused
    ids, mask = _batch([5, 9, 3], extra_padding=2)
    left_ids, left_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    for row in range(len(ids)):  # the same tokens, padding first
        n = int(mask[row].sum())
        left_ids[row, -n:], left_mask[row, -n:] = ids[row, :n], 1
    left_mask[1, 4] = 0  # and one masked position inside a sentence
    packed = OrtEncoder(pack_tokens(graph)[0], 1)
    with torch.inference_mode():
        for batch in ((left_ids, left_mask), (ids, mask)):
            assert (packed(*batch) - enc(*batch)).abs().max().item() < 1e-5


def test_the_number_of_groups_is_checked(fused):
    _, graph = fused
    with pytest.raises(ValueError, match="groups"):
        pack_tokens(graph, groups=0)
