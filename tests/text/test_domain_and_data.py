"""The sentence-embedding domain keys, the text corpus source and the fidelity measures."""

import numpy as np
import pytest
import torch

from torchslim._errors import ConfigError
from torchslim.domain import load_domain
from torchslim.text.data import load_sentence_splits, read_sentences
from torchslim.text.measure import fidelity, mean_cosine, pair_spearman, sentence_pairs, spearman

BASE = {"name": "m", "task": "sentence-embedding", "data": {"source": "text:s.txt"},
        "model": {"name": "all-minilm-l6-v2"}}


def test_metric_defaults_to_cosine_and_accuracy_is_refused():
    assert load_domain(dict(BASE)).metric == "cosine"
    with pytest.raises(ConfigError, match=r"^metric: a sentence-embedding domain is measured by cosine"):
        load_domain({**BASE, "metric": "accuracy"})
    with pytest.raises(ConfigError, match=r"^metric: cosine is the metric of sentence-embedding"):
        load_domain({**BASE, "task": "image-classification", "data": {"source": "digits"},
                     "model": {"name": "lenet300_100"}, "metric": "cosine"})


def test_text_source_and_model_path_belong_to_the_task():
    with pytest.raises(ConfigError, match=r"^data.source: a sentence-embedding domain reads sentences"):
        load_domain({**BASE, "data": {"source": "digits"}})
    with pytest.raises(ConfigError, match=r"^model.path: path names a sentence-transformers model directory"):
        load_domain({**BASE, "task": "image-classification", "data": {"source": "digits"},
                     "model": {"path": "somewhere"}, "metric": "accuracy"})
    with pytest.raises(ConfigError, match="exactly one of"):
        load_domain({**BASE, "model": {"name": "all-minilm-l6-v2", "path": "x"}})


def test_empty_corpus_and_no_usable_line(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    with pytest.raises(ConfigError, match=r"^data.source: .*empty.txt is empty"):
        read_sentences(tmp_path / "empty.txt")
    with pytest.raises(ConfigError, match="blank.txt is empty"):
        read_sentences(tmp_path / "blank.txt")
    (tmp_path / "nul.txt").write_bytes(b"\x00\x00\n\x00abc\n")
    with pytest.raises(ConfigError, match="no usable line"):
        read_sentences(tmp_path / "nul.txt")
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_sentences(tmp_path / "latin.txt")


def test_split_is_seeded_disjoint_and_sized(tmp_path):
    (tmp_path / "s.txt").write_text("\n".join(f"Sentence number {i}." for i in range(100)) + "\n\n")
    domain = load_domain({**BASE, "data": {"source": "text:s.txt", "test_fraction": 0.2, "val_fraction": 0.1,
                                           "seed": 3}}, base_dir=tmp_path)
    a = load_sentence_splits(domain.data, base_dir=tmp_path)
    b = load_sentence_splits(domain.data, base_dir=tmp_path)
    assert (len(a.train), len(a.val), len(a.test)) == (70, 10, 20)
    assert a.test == b.test and not set(a.test) & set(a.train) and not set(a.val) & set(a.train)
    assert sorted(a.train + a.val + a.test) == sorted(f"Sentence number {i}." for i in range(100))


def test_a_corpus_too_small_or_too_repetitive_to_rank_pairs_is_refused(tmp_path):
    # three lines split 1/1/1 used to run a whole stage and then fail on the one-sentence splits' pairs
    def splits(name, lines):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        domain = load_domain({**BASE, "data": {"source": f"text:{name}"}}, base_dir=tmp_path)
        return load_sentence_splits(domain.data, base_dir=tmp_path)

    with pytest.raises(ConfigError, match=r"three.txt: 3 sentence\(s\) give 1 for validation and 1 for test; each "
                                          r"needs at least 3 .*: give at least 26$"):
        splits("three.txt", ["a.", "b.", "c."])
    enough = splits("enough.txt", [f"s {i}." for i in range(26)])
    assert (len(enough.val), len(enough.test)) == (3, 5)
    with pytest.raises(ConfigError, match=r"400 usable line\(s\) but 1 distinct sentence\(s\)"):
        splits("same.txt", ["same line"] * 400)
    with pytest.raises(ConfigError, match=r"the (validation|test) split repeats one sentence"):
        splits("mostly.txt", ["same line"] * 400 + ["other one", "a third"])


def test_spearman_matches_a_hand_ranking_with_ties():
    # ranks of a: [1, 2.5, 2.5, 4]; of b: [4, 3, 2, 1] -> rho computed by hand = -0.9486832980505138
    assert spearman(np.array([1.0, 2.0, 2.0, 5.0]), np.array([9.0, 7.0, 3.0, 1.0])) == pytest.approx(
        -0.9486832980505138)
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


def test_fidelity_of_a_perturbed_copy():
    torch.manual_seed(0)
    ref = torch.nn.functional.normalize(torch.randn(200, 16), dim=1)
    assert mean_cosine(ref, ref) == pytest.approx(1.0)
    assert mean_cosine(ref, -ref) == pytest.approx(-1.0)
    noisy = ref + 0.3 * torch.randn(200, 16) / 4
    f = fidelity(ref, noisy)
    assert 0.9 < f["cosine"] < 0.999 and 0.5 < f["spearman"] < 0.999
    pairs = sentence_pairs(200)
    assert len(pairs) == len(set(pairs)) == 1000 and all(i < j for i, j in pairs)
    assert pair_spearman(ref, ref * 3.0, pairs) == pytest.approx(1.0)  # scale does not change a cosine
