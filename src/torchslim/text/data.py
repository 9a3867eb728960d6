"""Sentences for a sentence-embedding domain: ``text:FILE``, one sentence per line, split train / val / test.

The corpus is unlabelled: the fp32 model's embeddings are the targets (distillation) and the reference (metric).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim._errors import ConfigError
from torchslim._yaml import file_problem

MAX_CORPUS_BYTES = 512 * 2**20
MAX_SENTENCE_CHARS = 100_000  # a "line" longer than this is not a sentence (a minified file, a binary)


@dataclass
class SentenceSplits:
    """Train / validation / test sentences. Decisions use train and val; test is for reporting."""

    train: list[str]
    val: list[str]
    test: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def read_sentences(path: str | Path, field: str = "data.source") -> list[str]:
    """The usable lines of a UTF-8 text file: stripped, non-empty, in file order; an empty corpus is an error."""
    p = Path(path)
    problem = file_problem(p)
    if problem:
        raise ConfigError(field, f"{problem}: {p}" if problem == "file not found" else f"{p}: {problem}")
    if p.stat().st_size > MAX_CORPUS_BYTES:
        raise ConfigError(field, f"{p}: {p.stat().st_size:,} bytes; at most {MAX_CORPUS_BYTES:,} are read")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(field, f"{p}: not UTF-8 text (byte {exc.start})") from None
    lines = [line.strip() for line in text.splitlines()]
    sentences = [line for line in lines if line and "\x00" not in line and len(line) <= MAX_SENTENCE_CHARS]
    if not sentences:
        what = "is empty" if not text.strip() else "has no usable line (one sentence per line, text only)"
        raise ConfigError(field, f"{p} {what}")
    return sentences


MIN_SPLIT_SENTENCES = 3  # of the validation and test splits: three pairs of similarities to rank


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    return max(1, round(n * val_fraction)), max(1, round(n * test_fraction))


def text_source_path(source: str, base_dir: str | Path, field: str = "data.source") -> Path:
    """The file a ``text:FILE`` source names, relative to ``base_dir`` unless absolute."""
    kind, _, arg = source.partition(":")
    if kind != "text" or not arg:
        raise ConfigError(field, "expected text:FILE (one sentence per line)")
    path = Path(arg).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def load_sentence_splits(data: Any, *, base_dir: str | Path = ".") -> SentenceSplits:
    """``data.source`` (``text:FILE``, relative to ``base_dir``) read and split with ``data.seed``.

    The split is a seeded shuffle: the last ``test_fraction`` are test, the ``val_fraction`` before them val.
    """
    path = text_source_path(data.source, base_dir)
    sentences = read_sentences(path)
    distinct = len(set(sentences))
    if distinct < MIN_SPLIT_SENTENCES:
        raise ConfigError("data.source", f"{path}: {len(sentences)} usable line(s) but {distinct} distinct "
                                         f"sentence(s); similarities need at least {MIN_SPLIT_SENTENCES}")
    n_val, n_test = _split_sizes(len(sentences), data.val_fraction, data.test_fraction)
    if min(n_val, n_test) < MIN_SPLIT_SENTENCES or len(sentences) - n_val - n_test < 1:
        least = next(n for n in itertools.count(len(sentences) + 1)
                     if min(_split_sizes(n, data.val_fraction, data.test_fraction)) >= MIN_SPLIT_SENTENCES)
        raise ConfigError("data.source", f"{path}: {len(sentences)} sentence(s) give {n_val} for validation and "
                                         f"{n_test} for test; each needs at least {MIN_SPLIT_SENTENCES} (the "
                                         f"Spearman compares pairs of them): give at least {least}")
    order = list(range(len(sentences)))
    random.Random(data.seed).shuffle(order)
    pick = [sentences[i] for i in order]
    train, val, test = pick[:-n_test - n_val], pick[-n_test - n_val:-n_test], pick[-n_test:]
    for name, split in (("validation", val), ("test", test)):
        if len(set(split)) < 2:  # every similarity the same: nothing to rank
            raise ConfigError("data.source", f"{path}: the {name} split repeats one sentence {len(split)} times; "
                                             f"give a corpus of more distinct sentences")
    info = {"source": data.source, "sentences": len(sentences), "train": len(train), "val": len(val),
            "test": len(test), "seed": data.seed, "preprocessing": "one sentence per line, stripped; empty lines "
                                                                    "skipped; seeded shuffle split"}
    return SentenceSplits(train, val, test, info)
