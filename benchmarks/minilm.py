"""all-MiniLM-L6-v2 on CPU, side by side in one process: torch fp32 eager vs ONNX Runtime fp32 / fused / int8.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/minilm.py [--rounds 7] [--threads 2] [--structure]
        [--artifacts DIR ...]

Every engine gets the same token batches (held-out sentences, padded to the longest of each batch: batches of 32
in the order given, "b32", and the same 128 sentences sorted by length first, "b32 sorted", as ``encode`` batches
them; single sentences, "b1"), 2 threads (``--threads``);
rounds alternate over the engines (torch, a, b, ..., torch, a, b, ...) and the table gives medians. Quality: mean
cosine to the torch fp32 embeddings, and the Spearman correlation of cosine similarities over fixed sentence pairs
(fp32 pairs vs the engine's pairs). Sentences: ``domains/corpus/sentences.txt`` when the repository has it (the
held-out 20 % after a seeded shuffle), else docstring sentences of the standard library.
``--structure`` adds int8+fused latency of pruned shapes (random weights: latency only, no quality).
To add engines (e.g. a recipe's artifact): ``run(extra=[("name", onnx_bytes or callable(ids, mask))])``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from torchslim.text import SentenceEncoder, Tokenizer, builtin_model_dir, load_text_model  # noqa: E402
from torchslim.text.onnx import (Int8Config, OrtEncoder, export_onnx, fuse, fused_op_counts,  # noqa: E402
                                 quantize_int8)
from torchslim.text.token_packing import pack_tokens  # noqa: E402

THREADS = 2  # --threads sets it
CORPUS = Path(__file__).resolve().parents[1] / "domains" / "corpus" / "sentences.txt"
DOMAIN = Path(__file__).resolve().parents[1] / "domains" / "minilm.yaml"
Engine = Union[bytes, Callable]  # ONNX bytes (run in ORT) or callable(ids, mask) -> (N, hidden)

_STDLIB = ("os json re collections itertools functools pathlib subprocess threading asyncio email logging argparse "
           "unittest typing dataclasses inspect ast csv sqlite3 decimal fractions statistics random datetime "
           "calendar zipfile tarfile shutil tempfile socket ssl heapq bisect struct codecs string textwrap difflib "
           "enum abc contextlib io pickle copy weakref traceback warnings configparser hashlib secrets base64 uuid "
           "queue multiprocessing smtplib optparse locale gettext doctest pdb timeit platform glob fnmatch signal "
           "mmap operator numbers math").split()


def standin_sentences() -> list[str]:
    """Sentences of the standard library's docstrings (a stand-in corpus, ~4k sentences)."""
    found = set()
    for name in _STDLIB:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in dir(module):
            doc = getattr(getattr(module, attr, None), "__doc__", None)
            if isinstance(doc, str):
                for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                    if 25 <= len(s) <= 250 and s[0].isupper() and ">>>" not in s:
                        found.add(s)
    return sorted(found)


def split_sentences(seed: int = 0) -> tuple[list[str], list[str]]:
    """(calibration pool, held-out sentences). With the corpus: the minilm domain's own train and test splits, so
    a recipe's artifact (trained on the train split) is measured on sentences it never saw. Otherwise the
    stand-in: first 80 % / last 20 % after a seeded shuffle."""
    if CORPUS.exists():
        from torchslim.domain import load_domain
        from torchslim.text.data import load_sentence_splits

        domain = load_domain(DOMAIN)
        splits = load_sentence_splits(domain.data, base_dir=domain.base_dir)
        return splits.train, splits.test
    sentences = sorted(set(standin_sentences()))
    random.Random(seed).shuffle(sentences)
    cut = int(len(sentences) * 0.8)
    return sentences[:cut], sentences[cut:]


def _runner(engine: Engine) -> Callable:
    if isinstance(engine, (bytes, bytearray)):
        # workers sleep when a run returns: spinning idle ones would busy-wait into the next engine's timing
        return OrtEncoder(bytes(engine), intra_op_threads=THREADS, spinning=False).run
    return engine


def _embed(fn: Callable, batches) -> np.ndarray:
    with torch.inference_mode():
        out = [fn(ids, mask) for ids, mask in batches]
    return np.concatenate([o.numpy() if isinstance(o, torch.Tensor) else o for o in out]).astype(np.float64)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def _time(fn: Callable, batches) -> float:
    """ms per batch, one pass."""
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in batches:
            fn(ids, mask)
    return (time.perf_counter() - start) * 1e3 / len(batches)


def compare(engines: Sequence[tuple[str, Engine]], quality_batches, timing: dict[str, list], rounds: int = 7,
            sizes: dict[str, int] | None = None) -> list[dict]:
    """One row per engine: ms per batch (median over alternating rounds), speed-up vs the first engine, mean
    cosine and pair-Spearman vs the first engine's embeddings, ONNX bytes."""
    runners = [(name, _runner(e)) for name, e in engines]
    print(f"# load average before timing: {os.getloadavg()[0]:.2f} (a busy machine slows torch's OpenMP far "
          f"more than ONNX Runtime: compare only numbers measured with the machine otherwise idle)")
    ref = _embed(runners[0][1], quality_batches)
    half = len(ref) // 2
    ref_pairs = _cosine_rows(ref[:half], ref[half:2 * half])
    times = {(n, label): [] for n, _ in runners for label in timing}
    for label, batches in timing.items():
        for name, fn in runners:
            _time(fn, batches[:2])  # warm-up
        for _ in range(rounds):
            for name, fn in runners:
                times[(name, label)].append(_time(fn, batches))
    print(f"# load average after timing: {os.getloadavg()[0]:.2f}")
    rows = []
    for name, fn in runners:
        emb = _embed(fn, quality_batches)
        row = {"engine": name, "cosine": float(_cosine_rows(emb, ref).mean()),
               "spearman": _spearman(ref_pairs, _cosine_rows(emb[:half], emb[half:2 * half])),
               "bytes": (sizes or {}).get(name)}
        for label in timing:
            ms = statistics.median(times[(name, label)])
            base = statistics.median(times[(runners[0][0], label)])
            row[f"ms {label}"], row[f"x {label}"] = ms, base / ms
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        cells = []
        for k in keys:
            v = r[k]
            cells.append(f"{v:.4f}" if isinstance(v, float) and k in ("cosine", "spearman")
                         else f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v)))
        print(" | ".join(cells))


def batches_of(tok: Tokenizer, sentences: Sequence[str], size: int) -> list:
    return [tok(sentences[i:i + size]) for i in range(0, len(sentences), size)]


def build_engines(encoder: SentenceEncoder, calibration, *, verbose: bool = True) -> list[tuple[str, bytes]]:
    """The ORT engines of the table: plain, fused, quantize_dynamic as documented, per-channel, our int8 points."""
    from onnxruntime.quantization import quantize_dynamic  # as its documentation gives it: default arguments
    import tempfile

    plain = export_onnx(encoder)
    fused = fuse(plain, encoder)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "m.onnx").write_bytes(plain)
        quantize_dynamic(str(Path(tmp, "m.onnx")), str(Path(tmp, "q.onnx")))
        documented = Path(tmp, "q.onnx").read_bytes()
    engines = [("ort fp32", plain), ("ort fp32 fused", fused), ("ort quantize_dynamic (docs)", documented),
               ("ort dynamic per-channel", quantize_int8(plain, Int8Config(per_channel=True)))]
    points = {"fused dynamic per-channel": Int8Config(method="dynamic"),
              "fused dynamic per-channel, int8 embeddings": Int8Config(method="dynamic", embeddings=True),
              "fused static minmax": Int8Config(method="static"),
              "fused static minmax auto-fp32 (0.99)": Int8Config(method="static", keep_fp32="auto",
                                                                 cosine_target=0.99, max_keep=4)}
    for name, cfg in points.items():
        report: dict = {}
        engines.append((name, quantize_int8(fused, cfg, calibration, report=report)))
        if verbose:
            print(f"# {name}: calibration cosine {report['cosine']:.4f}, kept fp32 {report['kept_fp32']}, "
                  f"ops {fused_op_counts(engines[-1][1])}")
    # the same graphs computing on real tokens only (what the recipes' quantize stage ships)
    by_name = dict(engines)
    for name in ("ort fp32 fused", "fused dynamic per-channel, int8 embeddings"):
        engines.append((f"{name}, real tokens only", pack_tokens(by_name[name])[0]))
    return engines


def structure_latency(encoder: SentenceEncoder, timing, rounds: int) -> None:
    """int8 (dynamic, fused) latency of pruned shapes with random weights, next to the full model's."""
    torch.manual_seed(0)
    full = encoder.config
    shapes = {"6 layers (as is)": {}, "6 layers, FFN 768": {"ffn": [768] * 6},
              "4 layers": {"heads": [12] * 4, "ffn": [1536] * 4}, "3 layers": {"heads": [12] * 3, "ffn": [1536] * 3},
              "4 layers, FFN 768": {"heads": [12] * 4, "ffn": [768] * 4},
              "3 layers, FFN 768": {"heads": [12] * 3, "ffn": [768] * 3},
              "6 layers, 6 heads, FFN 768": {"heads": [6] * 6, "ffn": [768] * 6}}
    engines: list[tuple[str, Engine]] = [("torch fp32 (full)", encoder)]
    for name, change in shapes.items():
        enc = SentenceEncoder(**{**full, **change}).eval() if change else encoder
        fused = fuse(export_onnx(enc), enc)
        engines.append((f"ort int8 dyn fused: {name}", quantize_int8(fused, Int8Config())))
    first = {label: b for label, b in timing.items()}
    rows = compare(engines, first["b32"][:1], first, rounds)
    for r in rows:
        r.pop("cosine"), r.pop("spearman"), r.pop("bytes")
    print_table(rows)


def artifact_engines(paths: Sequence[str]) -> list[tuple[str, Engine]]:
    """(name, engine) of each artifact: the graph ONNX Runtime runs for it (its stored int8 graph, or an fp32
    export), sized by the artifact's bytes on disk."""
    from torchslim.artifact import artifact_size
    from torchslim.text.artifact import load_text_artifact

    engines = []
    for path in paths:
        folder = Path(path) / "artifact" if (Path(path) / "artifact").is_dir() else Path(path)
        model = load_text_artifact(folder, runtime="onnxruntime", intra_op_threads=THREADS)
        ARTIFACT_BYTES[folder.parent.name or str(folder)] = artifact_size(folder)
        engines.append((folder.parent.name or str(folder), model.onnx))
    return engines


ARTIFACT_BYTES: dict[str, int] = {}


def run(extra: Sequence[tuple[str, Engine]] = (), rounds: int = 5, structure: bool = False) -> list[dict]:
    """The table; ``extra`` engines (ONNX bytes or callables) are added after the built-in ones."""
    torch.set_num_threads(THREADS)
    model = load_text_model(builtin_model_dir("all-minilm-l6-v2"))
    encoder = model.encoder.eval()
    tok = Tokenizer(model.tokenizer_json, model.max_seq_length)
    pool, held = split_sentences()
    calibration = batches_of(tok, pool[:128], 32)
    quality = batches_of(tok, held[:1000], 32)
    by_length = sorted(held[:128], key=lambda s: -int(tok([s])[1].sum()))  # as encode() batches them
    timing = {"b32": batches_of(tok, held[:128], 32), "b32 sorted": batches_of(tok, by_length, 32),
              "b1": batches_of(tok, held[:16], 1)}
    print(f"# {len(pool) + len(held)} sentences ({'corpus' if CORPUS.exists() else 'stand-in'}), "
          f"{THREADS} threads, torch {torch.__version__}")
    engines: list[tuple[str, Engine]] = [("torch fp32 eager", encoder)] + build_engines(encoder, calibration)
    try:
        import torchao  # noqa: F401
        print("# torchao is importable but not measured here")
    except ImportError:
        print("# torchao not installed: no torchao row")
    engines += list(extra)
    sizes = {name: len(e) for name, e in engines if isinstance(e, (bytes, bytearray))}
    sizes.update(ARTIFACT_BYTES)
    rows = compare(engines, quality, timing, rounds, sizes)
    print_table(rows)
    if structure:
        structure_latency(encoder, timing, rounds)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch and ONNX Runtime threads (default 2)")
    parser.add_argument("--structure", action="store_true", help="latency of pruned shapes (random weights)")
    parser.add_argument("--artifacts", nargs="*", default=[], metavar="DIR",
                        help="artifacts (or run folders) of recipes/minilm, added as rows: their ONNX Runtime "
                             "graph, as stored; bytes are the whole artifact's")
    args = parser.parse_args()
    THREADS = args.threads
    run(extra=artifact_engines(args.artifacts), rounds=args.rounds, structure=args.structure)
