import pytest
import torch
from torch import nn

from torchslim.prune.attention import PrunableMultiheadAttention, convert_attention_, prune_heads_
from torchslim.quantize.attention import ProjectedMultiheadAttention

from .models import TransformerClassifier


# both replacements share one forward and differ in how q, k, v are projected (in_proj_weight blocks / a Linear)
CONVERT = {"prunable": PrunableMultiheadAttention.from_multihead_attention,
           "projected": ProjectedMultiheadAttention.from_attention}


@pytest.mark.parametrize("kind", sorted(CONVERT))
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "bool_causal", "float"])
def test_equals_multihead_attention(kind, batch_first, masks):
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    ours = CONVERT[kind](mha).eval()
    n, length = 3, 5
    x = torch.randn(n, length, 16) if batch_first else torch.randn(length, n, 16)
    kw = {}
    if masks == "padding":
        kw["key_padding_mask"] = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    elif masks == "bool_causal":
        kw["attn_mask"] = torch.ones(length, length, dtype=torch.bool).triu(1)
    elif masks == "float":
        kw["attn_mask"] = torch.randn(length, length)
    ref_out, ref_w = mha(x, x, x, **kw)
    out, w = ours(x, x, x, **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
    out, none = ours(x, x, x, need_weights=False, **kw)
    assert none is None
    # query, key and value as three tensors (each projected on its own) compute the same
    out, _ = ours(x, x.clone(), x.clone(), **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)


def test_converted_encoder_is_numerically_identical():
    model = TransformerClassifier().eval()
    x = torch.randn(4, 6, 6)
    pad = torch.zeros(4, 6, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        ref, ref_pad = model(x), model(x, pad)
    assert convert_attention_(model) == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x, pad), ref_pad, rtol=1e-5, atol=1e-6)
    # the state_dict keeps nn.MultiheadAttention's names
    assert "encoder.layers.0.self_attn.in_proj_weight" in model.state_dict()


def test_removing_a_silent_head_keeps_outputs():
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    attn = PrunableMultiheadAttention.from_multihead_attention(mha).eval()
    with torch.no_grad():
        attn.out_proj.weight[:, 4:8] = 0  # head 1 writes nothing
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        before = attn(x, x, x)[0]
        prune_heads_(attn, [1])
        after = attn(x, x, x)[0]
    assert (attn.num_heads, attn.in_proj_weight.shape, attn.out_proj.in_features) == (3, (36, 16), 12)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
