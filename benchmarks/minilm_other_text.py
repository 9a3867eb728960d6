"""Sentence-embedding artifacts on English of other kinds than the corpus they were built on.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/minilm_other_text.py ARTIFACT [ARTIFACT ...] [--threads 2]

A recipe's figures are measured on held-out sentences of ``domains/corpus/sentences.txt`` (the Python standard
library's prose and WordNet's usage examples); a user brings other text. Three sets no shipped recipe trains on,
each built here from what this machine has:

* ``descr``: scikit-learn's dataset descriptions (``sklearn/datasets/descr/*.rst``), technical prose;
* ``everyday``: sentences made from templates (people doing things, questions, opinions on topics), seeded;
* ``fortunes``: Debian's ``fortunes`` files (sayings, quotations, jokes; ``apt-get install fortunes``), at most 500
  sentences in a fixed shuffle; left out, with a note, when they are not installed.

Sentences are cut and filtered as the corpus builder does (``domains/corpus/build_corpus.py``). Each set becomes a
domain (80 % of it the test split) and each artifact is measured by ``torchslim eval --json``, exactly as a user
would: mean cosine to the fp32 model's embeddings and the Spearman correlation of pair similarities.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORTUNES = Path("/usr/share/games/fortunes")
# the plain-English files of Debian's fortunes package (its art, poems, Star Trek, Pratchett, Perl and Linux
# files are left out: pictures, verse, invented names, code)
FORTUNE_FILES = ("fortunes", "literature", "people", "wisdom", "work", "love", "education", "science", "politics",
                 "law", "food", "pets", "sports", "humorists", "miscellaneous", "platitudes", "kids", "medicine",
                 "men-women", "news")
MAX_FORTUNES = 500


@functools.cache
def _builder():
    """``domains/corpus/build_corpus.py`` as a module (loaded once)."""
    spec = importlib.util.spec_from_file_location("build_corpus", ROOT / "domains" / "corpus" / "build_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose_sentences(texts: list[str]) -> list[str]:
    """The corpus builder's paragraphs, sentences and prose filter over ``texts``; repeats dropped, order kept."""
    b = _builder()
    found = [s for text in texts for para in b.paragraphs(text) for s in b.sentences(para) if b.is_prose(s)]
    return list(dict.fromkeys(found))


def descr_sentences() -> list[str]:
    import sklearn

    folder = Path(sklearn.__file__).parent / "datasets" / "descr"
    return prose_sentences([p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.rst"))])


def everyday_sentences() -> list[str]:
    """Template sentences: 20 subjects doing 14 of 20 things (when, why), opinions on 15 topics, questions."""
    rng = random.Random(7)
    subjects = ["My neighbour", "The old fisherman", "A young teacher", "Our team", "The museum guide",
                "Her brother", "The pilot", "A tired nurse", "The committee", "My grandmother", "The new intern",
                "A local farmer", "The orchestra", "Two students", "The city council", "The chef", "A stray dog",
                "The startup", "Our landlord", "The children"]
    actions = ["painted the fence", "cancelled the meeting", "baked fresh bread", "repaired the bicycle",
               "wrote a long letter", "planted tomatoes", "sold the car", "visited the lighthouse", "forgot the keys",
               "booked a table", "cleaned the garage", "lost the match", "found a wallet", "opened a bakery",
               "learned to swim", "climbed the hill", "missed the train", "fixed the roof", "adopted a kitten",
               "signed the contract"]
    when = ["yesterday", "last summer", "on Monday morning", "after the storm", "before dinner",
            "during the holidays", "in early spring", "late at night", "two weeks ago", "at dawn"]
    why = ["because it was raining", "since nobody else would", "to save money", "after a long argument",
           "for the first time", "without telling anyone", "despite the cold", "as a surprise", "on a whim",
           "to help a friend"]
    topics = ["climate change", "the stock market", "machine learning", "renewable energy", "ancient Rome",
              "public transport", "healthy eating", "space exploration", "urban gardening", "remote work",
              "jazz music", "the Olympic games", "vaccines", "electric cars", "coffee farming"]
    opinions = ["I think {t} deserves more attention from schools.", "Recent reports on {t} were surprisingly "
                "optimistic.", "Many people misunderstand the basics of {t}.", "The debate about {t} has become "
                "very heated.", "She gave a fascinating lecture on {t} last night.", "A new documentary explores "
                "the history of {t}.", "Experts disagree about the future of {t}.", "He spent the whole weekend "
                "reading about {t}.", "The magazine devoted its entire issue to {t}.", "Funding for research into "
                "{t} was cut again.", "What are the main arguments for and against {t}?"]
    questions = ["How do I reset my password?", "Where is the nearest train station?", "What time does the "
                 "pharmacy close?", "Can you recommend a good book about history?", "Why is the sky blue during "
                 "the day?", "How long does it take to boil an egg?", "Is it safe to swim in the lake?", "What is "
                 "the capital of Australia?", "Who painted the ceiling of the chapel?", "When does the next bus "
                 "leave?"]
    found = {f"{s} {a} {rng.choice(when)} {rng.choice(why)}." for s in subjects for a in rng.sample(actions, 14)}
    found |= {o.format(t=t) for t in topics for o in opinions} | set(questions)
    ordered = sorted(found)
    rng.shuffle(ordered)
    return ordered


def fortune_sentences(folder: Path = FORTUNES) -> list[str]:
    """Sentences of the plain-English fortune files; attributions (lines starting ``--``) dropped."""
    texts = []
    for name in FORTUNE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [ln.strip() for ln in entry.splitlines() if not ln.strip().startswith("--")]
            texts.append(" ".join(ln for ln in lines if ln))
    found = prose_sentences(texts)
    return sorted(found, key=lambda s: hashlib.sha256(s.encode("utf-8")).hexdigest())[:MAX_FORTUNES]


DOMAIN = """name: {name}
task: sentence-embedding
data: {{source: "text:{name}.txt", test_fraction: 0.8, val_fraction: 0.05, seed: 0}}
model: {{name: all-minilm-l6-v2}}
metric: cosine
runtime: onnxruntime
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sets = {"descr": descr_sentences(), "everyday": everyday_sentences()}
    fortunes = fortune_sentences()
    if fortunes:
        sets["fortunes"] = fortunes
    else:
        print(f"note: no fortune files under {FORTUNES} (apt-get install fortunes): that set is left out")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p))
    with tempfile.TemporaryDirectory() as tmp:
        for name, sentences in sets.items():
            (Path(tmp) / f"{name}.txt").write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
            (Path(tmp) / f"{name}.yaml").write_text(DOMAIN.format(name=name))
        print("sets (80 % of each measured): " + ", ".join(f"{name} {len(s)} sentences" for name, s in sets.items()))
        print(f"{'artifact':<40} " + " ".join(f"{name + ' cos / Spearman':>26}" for name in sets))
        for artifact in args.artifacts:
            cells = []
            for name in sets:
                proc = subprocess.run([sys.executable, "-m", "torchslim", "eval", str(artifact), "--domain",
                                       str(Path(tmp) / f"{name}.yaml"), "--json", "--threads", str(args.threads)],
                                      capture_output=True, text=True, env=env)
                if proc.returncode:
                    last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                    sys.exit(f"error: {artifact} on {name}: {last}")
                m = json.loads(proc.stdout)
                cells.append(f"{m['value']:.4f} / {m['spearman']:.4f}")
            print(f"{str(artifact):<40} " + " ".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
