"""What a sentence-embedding domain measures: fidelity to the fp32 model (mean cosine, and the Spearman
correlation of pair similarities, a stand-in for STS) and latency side by side with torch fp32 eager."""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

Embed = Callable[[Sequence[str]], torch.Tensor]  # sentences -> (N, hidden) float32


def embed_all(embed: Embed, sentences: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Embeddings of ``sentences`` in batches, (N, hidden), float32 on the CPU."""
    out = [embed(sentences[i:i + batch_size]).detach().float().cpu() for i in range(0, len(sentences), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of cos(a_i, b_i)."""
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1).mean())


def sentence_pairs(n_sentences: int, n_pairs: int = 1000, seed: int = 0) -> list[tuple[int, int]]:
    """A fixed set of distinct index pairs (i < j), seeded: the pairs whose similarities the Spearman compares."""
    rng = random.Random(seed)
    pairs: set[tuple[int, int]] = set()
    limit = n_sentences * (n_sentences - 1) // 2
    while len(pairs) < min(n_pairs, limit):
        i, j = rng.randrange(n_sentences), rng.randrange(n_sentences)
        if i != j:
            pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equally long vectors."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def pair_spearman(reference: torch.Tensor, candidate: torch.Tensor, pairs: list[tuple[int, int]]) -> float:
    """Spearman between the reference's and the candidate's cosine similarities over ``pairs``."""
    i = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    j = torch.tensor([p[1] for p in pairs], dtype=torch.long)

    def sims(e: torch.Tensor) -> np.ndarray:
        e = torch.nn.functional.normalize(e.detach().cpu().double(), dim=1)
        return (e[i] * e[j]).sum(1).numpy()

    return spearman(sims(reference), sims(candidate))


def fidelity(reference: torch.Tensor, candidate: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """``cosine`` (mean) and ``spearman`` (pair similarities) of ``candidate`` against ``reference``."""
    pairs = sentence_pairs(len(reference), seed=seed)
    return {"cosine": mean_cosine(reference, candidate), "spearman": pair_spearman(reference, candidate, pairs)}


LATENCY_BATCHES = {"batch_1": 1, "batch_32": 32, "batch_64": 64}
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> (N, hidden)


def token_batches(tokenizer: Callable, sentences: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One batch of each latency size made of real sentences (repeated when there are fewer), tokenised once."""
    out = {}
    for key, size in LATENCY_BATCHES.items():
        picked = [sentences[i % len(sentences)] for i in range(size)]
        out[key] = tokenizer(picked)
    return out


@torch.inference_mode()
def side_by_side_latency(baseline: Forward, compressed: Forward, batches: dict[str, tuple[torch.Tensor, torch.Tensor]],
                         *, rounds: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Baseline and compressed timed in alternating rounds on the same token batches (as
    :func:`torchslim.evaluate.side_by_side_latency` does for classifiers): a busy spell slows both alike.

    Returns:
        ``baseline_latency_ms``, ``latency_ms`` ({batch: median ms}) and ``latency_spread`` ({batch: each
        model's interquartile range of round times, the ratio, its interquartile range, whether 1.0 lies outside
        it}); ``others_running``, ``cores`` and ``threads``:
        the machine's load while timing (see :func:`torchslim.evaluate.timing_caveat`).
    """
    from torchslim.evaluate import others_running, usable_cores

    engines = {"baseline": baseline, "compressed": compressed}
    medians: dict[str, dict[str, float]] = {"baseline": {}, "compressed": {}}
    spread: dict[str, dict[str, Any]] = {}
    others: list[int] = []
    for key, (ids, mask) in batches.items():
        for engine in engines.values():
            for _ in range(warmup):
                engine(ids, mask)
        times: dict[str, list[float]] = {"baseline": [], "compressed": []}
        for r in range(rounds):
            sample = others_running()
            if sample is not None:
                others.append(sample)
            for name in (("baseline", "compressed") if r % 2 == 0 else ("compressed", "baseline")):
                calls = []
                for _ in range(5 if len(ids) == 1 else 1):  # a batch of 32 sentences is long enough to time once
                    start = time.perf_counter()
                    engines[name](ids, mask)
                    calls.append((time.perf_counter() - start) * 1e3)
                times[name].append(statistics.median(calls))
        ratios = [b / c for b, c in zip(times["baseline"], times["compressed"])]
        rq = statistics.quantiles(ratios, n=4)
        spread[key] = {}
        for name in times:
            medians[name][key] = statistics.median(times[name])
            q = statistics.quantiles(times[name], n=4)
            spread[key][f"{name}_iqr_ms"] = [q[0], q[2]]
        spread[key].update(ratio=statistics.median(ratios), ratio_iqr=[rq[0], rq[2]],
                           significant=not rq[0] <= 1.0 <= rq[2])
    return {"baseline_latency_ms": medians["baseline"], "latency_ms": medians["compressed"], "latency_spread": spread,
            "others_running": statistics.median(others) if others else None, "cores": usable_cores(),
            "threads": torch.get_num_threads()}


@torch.inference_mode()
def torch_peak_memory_bytes(encoder: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> int:
    """The encoder's tensors plus the most torch's CPU allocator held at once during one forward pass (measured
    with ``torch.profiler``, as :func:`torchslim.evaluate.peak_memory_bytes` does for classifiers)."""
    from torchslim.evaluate import _peak_allocated, _quiet_stderr, resident_bytes

    encoder(ids, mask)
    with _quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                 profile_memory=True) as prof:
        out = encoder(ids, mask)
        del out
    return resident_bytes(encoder) + _peak_allocated(prof.profiler.kineto_results.events())


_ORT_MEMORY_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
def status(key):  # kB; VmHWM is this process image's peak (ru_maxrss would count the parent forked from)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
folder, threads = sys.argv[1], int(sys.argv[2])
inputs = dict(np.load(folder + "/inputs.npz"))
before = status("VmRSS")
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(folder + "/model.onnx", opts, providers=["CPUExecutionProvider"],
                               disabled_optimizers=sys.argv[3].split(","))
session.run(None, inputs)
print(status("VmHWM") - before)
"""


def ort_peak_memory_bytes(onnx_bytes: bytes, ids: torch.Tensor, mask: torch.Tensor, threads: int) -> int | None:
    """Peak resident memory an ONNX Runtime session adds while it loads ``onnx_bytes`` and runs one batch
    (weights, arena, activations), measured in a fresh process: ORT allocates outside torch, and a process that
    has run other models reuses freed pages, so only a clean one gives a number that means something.
    None where that cannot be measured (no ``/proc``, the process fails)."""
    import subprocess
    import sys
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="torchslim-memory-") as tmp:
        with open(f"{tmp}/model.onnx", "wb") as f:
            f.write(onnx_bytes)
        np.savez(f"{tmp}/inputs.npz", input_ids=ids.numpy(), attention_mask=mask.numpy())
        try:
            from torchslim.export.runtime import DISABLED_FUSIONS

            proc = subprocess.run([sys.executable, "-c", _ORT_MEMORY_SCRIPT, tmp, str(threads),
                                   ",".join(DISABLED_FUSIONS)],
                                  capture_output=True, text=True, timeout=600)
            return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None
