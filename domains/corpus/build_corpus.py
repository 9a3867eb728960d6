"""Build ``sentences.txt``: English prose sentences from the running Python's standard library and WordNet.

Two sources, so that a model distilled on the corpus meets both technical and everyday English:
- CPython's standard library, under the PSF License: the docstrings (modules, classes, functions) and ``#``
  comments of every standard-library ``.py`` file, test suites included, and the pydoc help topics
  (``pydoc_data/topics.py``, the language reference as plain text). Only the standard library of the interpreter
  that runs this script is read, so the same Python version regenerates the same bytes; another version gives
  different text.
- WordNet 3.0's usage examples (Princeton University, under the WordNet 3.0 licence, which allows redistribution
  with its notice): the quoted examples in the glosses of ``data.noun``, ``data.verb``, ``data.adj`` and
  ``data.adv`` (Debian's ``wordnet-base`` package installs them under ``/usr/share/wordnet``), each given a
  capital letter and a full stop when it has none.

Sentences that look like code are dropped (see ``is_prose``), repeats are dropped ignoring case, and the rest is
ordered by the sha256 of each sentence: shuffled, but the same order on every run; the first MAX_SENTENCES are the
corpus. ``extra_sentences.txt`` gets the rest and WordNet's definitions (more text to distill on, never measured on),
none of them in the corpus.

Run from the repository root:  python domains/corpus/build_corpus.py
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import inspect
import io
import re
import statistics
import sys
import sysconfig
import tokenize
from pathlib import Path

OUT = Path(__file__).with_name("sentences.txt")
EXTRA = Path(__file__).with_name("extra_sentences.txt")
WORDNET = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
MIN_WORDS, MAX_WORDS = 4, 60
MAX_SENTENCES = 40_000
MIN_LETTER_FRACTION = 0.85  # of the non-space characters
# Installed third-party packages are not the standard library (the test suites are, and are kept).
SKIP_DIRS = {"site-packages", "__pycache__"}
# A sentence holding any of these is code, markup, a path or an address rather than prose.
CODE_MARKS = (">>>", "...", "://", "=", "_", "{", "}", "[", "]", "<", ">", "\\", "|", "#", "$", "@", "*", "~",
              "^", "`", "()", "+", "%", "&", "\ufffd")
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Mrs.", "Dr.", "No.", "approx.", "resp.", "al.")
ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]*)`")  # :func:`name` -> name
LITERAL = re.compile(r"``([^`]*)``|`([^`']*)[`']|\*\*?(\w[^*]*?)\*\*?")  # ``x``, `x`, `x', *x*, **x**
RULE_LINE = re.compile(r"^\s*([=\-*~^#+\"'])\1{2,}\s*$")  # reST heading underlines
BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)]|[a-z][.)])\s")
# after . ! ? (or one closing quote or bracket after them), before a capital (or an opening quote or bracket)
SPLIT = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')]))\s+(?=[\"'(]?[A-Z])")
DOTTED_NAME = re.compile(r"[A-Za-z]\.[A-Za-z]")
GLUED_COLON = re.compile(r":\S")
WORK_NOTE = re.compile(r"\b(?:XXX+|TODO|FIXME)\b")  # notes to the maintainers, not statements


def stdlib_files(root: Path) -> list[Path]:
    """The standard library's own .py files (test suites included), sorted, without installed packages."""
    return sorted(p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))


def read_source(path: Path) -> str:
    """A file's text in the encoding its coding cookie names (a few test files are not UTF-8)."""
    data = path.read_bytes()
    try:
        return importlib.util.decode_source(data)
    except (SyntaxError, LookupError, UnicodeDecodeError):
        return data.decode("utf-8", errors="replace")


def docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of one file (an unparsable file gives none)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for node in ast.walk(tree) if isinstance(node, kinds) and (d := ast.get_docstring(node))]


def comments(source: str) -> list[str]:
    """Blocks of consecutive ``#`` comment lines of one file, one text per block."""
    blocks: list[list[str]] = []
    last_row = -1
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            line = tok.string.lstrip("#").strip()
            if blocks and tok.start[0] == last_row + 1:
                blocks[-1].append(line)
            else:
                blocks.append([line])
            last_row = tok.start[0]
    except (tokenize.TokenError, SyntaxError):  # a broken file keeps the blocks read before the error
        pass
    return ["\n".join(block) for block in blocks]


def help_topics(root: Path) -> list[str]:
    """The texts of pydoc's help topics, read from the source rather than imported."""
    path = root / "pydoc_data" / "topics.py"
    if not path.exists():
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [v.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
            for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]


def _glosses(folder: Path):
    """The ``;``-separated parts of each gloss of WordNet's data files, stripped, one list per synset.

    A data line reads ``offset ... | gloss; "example"; "example"``; lines starting with spaces are the licence.
    """
    for name in WORDNET_FILES:
        for line in (folder / name).read_text(encoding="utf-8").splitlines():
            if not line.startswith(" ") and " | " in line:
                yield [part.strip() for part in line.split(" | ", 1)[1].split(";")]


def _as_sentence(text: str) -> str:
    """A capital first letter, and a full stop when it ends without ``.``, ``!`` or ``?``."""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def wordnet_examples(folder: Path) -> list[str]:
    """The quoted usage examples of WordNet's glosses, as sentences."""
    return [_as_sentence(example) for parts in _glosses(folder) for part in parts
            if len(part) > 2 and part[0] == part[-1] == '"' and (example := part[1:-1].strip())]


def wordnet_definitions(folder: Path) -> list[str]:
    """The definitions of WordNet's glosses (the unquoted parts, joined with ``; ``), as sentences."""
    joined = ("; ".join(p for p in parts if p and not p.startswith('"')) for parts in _glosses(folder))
    return [_as_sentence(definition) for definition in joined if definition]


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs as single lines; code blocks, lists and headings dropped.

    A paragraph is kept only when its lines share one indentation and it has no interactive prompt: indented
    blocks after ``::`` are examples, and a line that starts deeper than the first is usually code.
    """
    text = inspect.cleandoc(text)
    kept = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.split("\n") if ln.strip() and not RULE_LINE.match(ln)]
        if not lines or any(">>>" in ln or BULLET.match(ln) for ln in lines):
            continue
        if len({len(ln) - len(ln.lstrip()) for ln in lines}) > 1:
            continue
        kept.append(" ".join(ln.strip() for ln in lines))
    return kept


def sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences, not after abbreviations such as "e.g." or single initials."""
    paragraph = LITERAL.sub(lambda m: next(g for g in m.groups() if g is not None), ROLE.sub(r"\1", paragraph))
    paragraph = re.sub(r"\s+", " ", paragraph).strip()
    out: list[str] = []
    for piece in SPLIT.split(paragraph):
        if out and (out[-1].endswith(ABBREVIATIONS) or re.search(r"(?:^|\s)[A-Z]\.$", out[-1])):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return out


def is_prose(s: str) -> bool:
    """True for a sentence of MIN_WORDS..MAX_WORDS words that reads as English prose rather than code."""
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not ("A" <= s[0] <= "Z" and s[-1] in ".!?" and not s.endswith("..")):
        return False
    if any(mark in s for mark in CODE_MARKS):
        return False
    plain = s
    for abbreviation in ABBREVIATIONS:
        plain = plain.replace(abbreviation, "")
    if DOTTED_NAME.search(plain):  # os.path, self.name
        return False
    if s.count("(") != s.count(")") or s.count("(") > 1 or s.count('"') % 2:  # calls, a quote cut in two
        return False
    if GLUED_COLON.search(s) or WORK_NOTE.search(s):  # key:value, slices, ns:tag; "XXX fix this."
        return False
    if sum(w.islower() for w in words) < len(words) / 2:  # headings, lists of names, ALL CAPS
        return False
    chars = s.replace(" ", "")
    return sum(c.isalpha() for c in chars) >= MIN_LETTER_FRACTION * len(chars)


def collect(root: Path, wordnet: Path) -> list[str]:
    """Every prose sentence of the standard library under ``root`` and of WordNet's examples (with repeats)."""
    texts = help_topics(root)
    for path in stdlib_files(root):
        source = read_source(path)
        texts += docstrings(source) + comments(source)
    found = [s for text in texts for para in paragraphs(text) for s in sentences(para) if is_prose(s)]
    return found + [s for s in wordnet_examples(wordnet) if is_prose(s)]


def dedupe_and_order(found: list[str], taken: frozenset[str] = frozenset()) -> list[str]:
    """One sentence per case-insensitive key (the smallest spelling), shuffled by sha256; keys in ``taken`` are
    left out."""
    by_key: dict[str, str] = {}
    for s in found:
        key = s.casefold()
        if key not in taken:
            by_key[key] = min(s, by_key.get(key, s))
    return sorted(by_key.values(), key=lambda s: (hashlib.sha256(s.encode("utf-8")).hexdigest(), s))


def build(root: Path, wordnet: Path) -> tuple[list[str], list[str]]:
    """The corpus (the first MAX_SENTENCES prose sentences in the fixed shuffle) and the extra sentences: the
    prose sentences past the cap and WordNet's definitions, none of them in the corpus, ignoring case."""
    ordered = dedupe_and_order(collect(root, wordnet))
    corpus = ordered[:MAX_SENTENCES]
    definitions = [s for s in wordnet_definitions(wordnet) if is_prose(s)]
    extra = dedupe_and_order(ordered[MAX_SENTENCES:] + definitions, frozenset(s.casefold() for s in corpus))
    return corpus, extra


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT,
                        help=f"file to write (default: {OUT.name} beside this script)")
    parser.add_argument("--extra-out", type=Path, default=None,
                        help=f"file for the extra sentences (default: {EXTRA.name} beside --out)")
    parser.add_argument("--wordnet", type=Path, default=WORDNET,
                        help=f"folder holding WordNet 3.0's data.* files (default: {WORDNET})")
    args = parser.parse_args(argv)
    out, wordnet = args.out, args.wordnet
    missing = [name for name in WORDNET_FILES if not (wordnet / name).is_file()]
    if missing:
        parser.error(f"{wordnet} lacks WordNet's {', '.join(missing)} (Debian: apt-get install wordnet-base)")
    root = Path(sysconfig.get_paths()["stdlib"])
    kept, extra = build(root, wordnet)
    extra_out = out.with_name(EXTRA.name) if args.extra_out is None else args.extra_out
    print(f"Python {sys.version.split()[0]} stdlib {root}, WordNet {wordnet}")
    for path, lines in ((out, kept), (extra_out, extra)):
        path.write_bytes("".join(s + "\n" for s in lines).encode("utf-8"))
        lengths = [len(s.split()) for s in lines]
        print(f"{path.name}: {len(lines)} sentences, {path.stat().st_size} bytes, words per sentence: "
              f"mean {statistics.mean(lengths):.2f}, median {statistics.median(lengths)}")


if __name__ == "__main__":
    main()
