"""A sentence-embedding artifact: saved, reloaded into something that encodes text with its own tokenizer, and
refused when tampered with."""

import json
import shutil

import pytest
import torch

from torchslim.artifact import ArtifactError, read_manifest
from torchslim.text import load_text_model
from torchslim.text.artifact import load_text_artifact, save_text_artifact

from tests.text.conftest import toy_sentences


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_text_model(tiny_model_dir)


@pytest.fixture
def saved(tmp_path, tiny):
    return save_text_artifact(tiny.encoder, tmp_path / "artifact", tokenizer_json=tiny.tokenizer_json,
                              max_seq_length=tiny.max_seq_length)


def test_reload_encodes_exactly_like_the_source_model(saved, tiny):
    from torchslim.text import Tokenizer

    sentences = toy_sentences(40)
    model = load_text_artifact(saved)
    with torch.inference_mode():
        expected = tiny.encoder(*Tokenizer(tiny.tokenizer_json, tiny.max_seq_length)(sentences))
    got = model.encode(sentences, batch_size=7)
    assert got.shape == (40, 32)
    assert (got - expected).abs().max().item() < 1e-5
    assert read_manifest(saved)["task"] == "sentence-embedding"


def test_encode_batches_similar_lengths_and_returns_the_given_order(saved):
    """Sorted by length, the batches pad fewer positions; the embeddings come back in the caller's order, the
    same as unsorted (fp32)."""
    model = load_text_artifact(saved)
    sentences = [s * (1 + i % 5) for i, s in enumerate(toy_sentences(30))]  # lengths that vary, shuffled
    tokenize, padded = model.tokenizer, []

    def counting(batch):
        ids, mask = tokenize(batch)
        padded.append(ids.numel())
        return ids, mask

    model.tokenizer = counting
    by_length = model.encode(sentences, batch_size=8)
    sorted_positions, padded[:] = sum(padded), []
    as_given = model.encode(sentences, batch_size=8, sort_by_length=False)
    assert sorted_positions < sum(padded)
    assert (by_length - as_given).abs().max().item() < 1e-5


def test_encodes_without_the_source_directory(tmp_path, tiny_model_dir, tiny):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    moved = load_text_model(copy)
    artifact = save_text_artifact(moved.encoder, tmp_path / "a", tokenizer_json=moved.tokenizer_json,
                                  max_seq_length=moved.max_seq_length)
    shutil.rmtree(copy)
    assert load_text_artifact(artifact).encode(["A sentence."]).shape == (1, 32)


def test_torchslim_load_gives_the_embedder(saved):
    import torchslim

    model = torchslim.load(saved)
    assert model.encode(["One.", "Two."]).shape == (2, 32)
    with pytest.raises(TypeError, match="list of sentences"):
        model.encode("One.")
    with pytest.raises(TypeError, match="^encode takes a list of sentences, not NoneType$"):
        model.encode(None)
    with pytest.raises(TypeError, match=r"^encode takes a list of sentences \(strings\); item 1 is int$"):
        model.encode(["ok", 3])
    assert model.encode(("One.", "Two.")).shape == (2, 32)  # any sequence of strings


def test_edited_tokenizer_is_refused(saved):
    path = saved / "tokenizer.json"
    data = json.loads(path.read_text())
    data["model"]["vocab"]["hello"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="tokenizer.json is corrupted"):
        load_text_artifact(saved)


def test_an_unrecorded_file_is_refused(saved):
    (saved / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ArtifactError, match="vocab.txt"):
        load_text_artifact(saved)


def test_a_hostile_architecture_is_refused_before_allocating(saved, tmp_path):
    from torchslim.artifact._format import update_manifest

    manifest = read_manifest(saved)
    arch = manifest["architecture"]
    update_manifest(saved, architecture={**arch, "kwargs": {**arch["kwargs"], "vocab_size": 10**7,
                                                              "hidden_size": 16384}})
    with pytest.raises(ArtifactError, match="at most"):
        load_text_artifact(saved)


def test_int8_artifact_stores_each_weight_once_and_runs_the_measured_graph(tmp_path, tiny):
    from torchslim.artifact import artifact_size
    from torchslim.text import Tokenizer
    from torchslim.text._initializers import onnx_weight_map
    from torchslim.text.onnx import Int8Config, OrtEncoder, export_onnx, fuse, quantize_int8

    graph = fuse(export_onnx(tiny.encoder), tiny.encoder)
    weight_map = onnx_weight_map(graph, tiny.encoder)
    int8 = quantize_int8(graph, Int8Config(method="dynamic", per_channel=True, embeddings=True))
    plain = save_text_artifact(tiny.encoder, tmp_path / "fp32", tokenizer_json=tiny.tokenizer_json,
                               max_seq_length=tiny.max_seq_length)
    saved = save_text_artifact(tiny.encoder, tmp_path / "int8", tokenizer_json=tiny.tokenizer_json,
                               max_seq_length=tiny.max_seq_length, onnx=int8, onnx_kind="int8 dynamic",
                               weight_map=weight_map)
    stored = read_manifest(saved)["tensors"]
    # every Linear weight and the word embeddings live only in the graph's int8 form
    assert "embeddings.word_embeddings.weight" in weight_map and "encoder.layer.1.output.dense.weight" in weight_map
    assert not set(weight_map) & set(stored)
    assert any(k.startswith("onnx/") and k.endswith("_quantized") for k in stored)
    # the word table dominates: int8 makes the file about 4x smaller than the fp32 one (tokenizer included)
    assert artifact_size(saved) < artifact_size(plain) / 2.5

    ids, mask = Tokenizer(tiny.tokenizer_json, tiny.max_seq_length)(toy_sentences(24))
    ort_model = load_text_artifact(saved, runtime="onnxruntime")
    assert ort_model.onnx == int8  # byte for byte the graph that was quantized (and would be measured)
    assert torch.equal(ort_model.session(ids, mask), OrtEncoder(int8)(ids, mask))
    torch_model = load_text_artifact(saved)
    with torch.inference_mode():
        dequantized, original = torch_model.encoder(ids, mask), tiny.encoder(ids, mask)
    w = torch_model.encoder.state_dict()["encoder.layer.0.intermediate.dense.weight"]
    w0 = tiny.encoder.state_dict()["encoder.layer.0.intermediate.dense.weight"]
    assert not torch.equal(w, w0) and (w - w0).abs().max() <= w0.abs().max() / 127  # within one int8 step
    cos = torch.nn.functional.cosine_similarity(dequantized, ort_model.session(ids, mask)).min()
    assert cos > 0.98 and torch.nn.functional.cosine_similarity(dequantized, original).min() > 0.98
