"""The shipped sentence corpus: its shape, its sources and filters, and that build_corpus.py regenerates it exactly."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "domains" / "corpus"
SENTENCES = CORPUS / "sentences.txt"
EXTRA = CORPUS / "extra_sentences.txt"
BUILT_WITH = re.search(r"Built with Python (\d+\.\d+\.\d+)", (CORPUS / "README.md").read_text()).group(1)
RUNNING = ".".join(map(str, sys.version_info[:3]))
WORDNET = Path("/usr/share/wordnet")


def load_builder():
    spec = importlib.util.spec_from_file_location("build_corpus", CORPUS / "build_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lines():
    data = SENTENCES.read_bytes()
    assert data.endswith(b"\n")
    return data.decode("utf-8").split("\n")[:-1]


def test_corpus_is_large_and_clean(lines):
    assert len(lines) >= 20_000
    assert all(line.strip() == line and line for line in lines)  # no empty line, no stray whitespace
    assert len({line.casefold() for line in lines}) == len(lines)  # no duplicate, ignoring case
    assert all(line[-1] in ".!?" and "A" <= line[0] <= "Z" for line in lines)
    assert all(4 <= len(line.split()) <= 60 for line in lines)
    assert SENTENCES.stat().st_size < 4_000_000


def test_corpus_is_shuffled_by_sha256(lines):
    builder = load_builder()
    assert builder.dedupe_and_order(list(reversed(lines))) == lines


def test_filters_keep_prose_and_drop_code():
    builder = load_builder()
    assert builder.is_prose("Return the number of items in a container.")
    for code in ["Call os.path.join(a, b) here.", "Set x = 3 before the loop.", ">>> print(1) gives one.",
                 "Return self._cache for the key.", "Use a:b slices on every list.", "XXX fix this later please.",
                 "Too short.", "the lower-case start is not a sentence.", "No final full stop here"]:
        assert not builder.is_prose(code), code
    assert builder.sentences("Use it, e.g. twice. Then stop! Done? Yes.") == [
        "Use it, e.g. twice.", "Then stop!", "Done?", "Yes."]


def wordnet_folder(folder, builder, name, lines):
    """WordNet's four data files in ``folder``, each opening with a licence line; ``name`` holds ``lines`` too."""
    for each in builder.WORDNET_FILES:
        (folder / each).write_text("  1 This software and database is being provided to you | not a gloss\n")
    (folder / name).write_text(lines, encoding="utf-8")
    return folder


def test_wordnet_examples_are_the_quoted_parts_of_glosses_made_sentences(tmp_path):
    builder = load_builder()
    wordnet_folder(tmp_path, builder, "data.noun",
                   '  1 licence line | "a quoted licence line"\n'
                   '00001740 03 n 01 entity 0 000 | that which is perceived; "the children played in the park"; '
                   '"Is it raining?"; "cut it; twice"\n'
                   '00002137 03 n 01 thing 0 000 | an entity; "it happened" - Someone\n')
    assert builder.wordnet_examples(tmp_path) == ["The children played in the park.", "Is it raining?"]


def test_wordnet_definitions_are_the_unquoted_parts_of_glosses_made_sentences(tmp_path):
    builder = load_builder()
    wordnet_folder(tmp_path, builder, "data.verb",
                   '00001740 03 v 01 breathe 0 000 | draw air into, and expel out of, the lungs; take a breath; '
                   '"I can breathe better now"\n'
                   '00002137 03 v 01 quote 0 000 | "only an example"\n')
    assert builder.wordnet_definitions(tmp_path) == [
        "Draw air into, and expel out of, the lungs; take a breath."]


def test_extra_sentences_are_prose_and_none_is_in_the_corpus(lines):
    data = EXTRA.read_bytes()
    assert data.endswith(b"\n")
    extra = data.decode("utf-8").split("\n")[:-1]
    assert len(extra) >= 100_000
    keys = {line.casefold() for line in extra}
    assert len(keys) == len(extra)
    assert not keys & {line.casefold() for line in lines}
    assert all(line.strip() == line and line[-1] in ".!?" and "A" <= line[0] <= "Z" for line in extra)
    builder = load_builder()
    assert builder.dedupe_and_order(list(reversed(extra))) == extra


def test_build_keeps_the_cap_for_the_corpus_and_the_rest_apart(monkeypatch):
    builder = load_builder()
    found = [f"Sentence number {i} is here." for i in range(10)] + ["SENTENCE NUMBER 3 IS HERE."]
    monkeypatch.setattr(builder, "collect", lambda root, wordnet: found)
    monkeypatch.setattr(builder, "wordnet_definitions", lambda wordnet: [
        "Sentence number 2 is here.", "A definition made a sentence.", "Too short."])
    monkeypatch.setattr(builder, "MAX_SENTENCES", 6)
    corpus, extra = builder.build(Path("."), Path("."))
    assert corpus == builder.dedupe_and_order(found)[:6]
    assert len(corpus) + len(extra) == 11  # ten sentences (one repeat by case) and one new definition
    assert "A definition made a sentence." in extra and "Too short." not in extra
    assert not {s.casefold() for s in corpus} & {s.casefold() for s in extra}


def test_corpus_holds_both_kinds_of_english(lines):
    """The everyday examples (WordNet) and the technical prose (the standard library) each make a large share."""
    builder = load_builder()
    if not all((WORDNET / name).is_file() for name in builder.WORDNET_FILES):
        pytest.skip(f"WordNet's data files are not installed under {WORDNET}")
    everyday = {s.casefold() for s in builder.wordnet_examples(WORDNET)}
    share = sum(line.casefold() in everyday for line in lines) / len(lines)
    assert 0.3 < share < 0.7, share


@pytest.mark.slow
@pytest.mark.skipif(RUNNING != BUILT_WITH, reason=f"corpus built with Python {BUILT_WITH}, running {RUNNING}")
@pytest.mark.skipif(not (WORDNET / "data.noun").is_file(), reason=f"WordNet's data files are not under {WORDNET}")
def test_build_regenerates_identical_files(tmp_path):
    out = tmp_path / "sentences.txt"
    subprocess.run([sys.executable, str(CORPUS / "build_corpus.py"), "--out", str(out)], check=True,
                   capture_output=True, timeout=600)
    assert out.read_bytes() == SENTENCES.read_bytes()
    assert (tmp_path / EXTRA.name).read_bytes() == EXTRA.read_bytes()
