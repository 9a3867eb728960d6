"""Metric, size, latency and memory: the same code measures the baseline and the compressed model."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchslim._errors import ConfigError

Predict = Callable[[torch.Tensor], torch.Tensor]  # (N, *input_shape) -> (N, classes)

LATENCY_BATCHES = {"batch_1": 1, "batch_64": 64}


def _as_predict(model: nn.Module | Predict, device: Optional[torch.device]) -> Predict:
    if isinstance(model, nn.Module):
        model.eval()
        dev = device or next((p.device for p in model.parameters()), torch.device("cpu"))

        def predict(x: torch.Tensor) -> torch.Tensor:
            return model(x.to(dev))

        return predict
    return model


def top_classes(logits: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(N, k) indices of each row's ``k`` highest logits, a tie going to the lower class index as ``argmax`` breaks
    it. Why: an int8 graph's quantized logits tie often, and ``topk`` breaks ties its own way, so a metric
    computed with it need not be what the user's own ``argmax`` gets from the same file."""
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :min(k, logits.shape[1])]


def check_metric_fits(metric: str, num_classes: int) -> None:
    """Refuse top-5 accuracy on data of five classes or fewer: every sample would count as right, so the metric,
    its drop and every constraint on them would say nothing."""
    if metric == "top5" and num_classes <= 5:
        raise ConfigError("metric", f"top5 needs more than 5 classes, the data has {num_classes}: every sample "
                                    f"would count as right; use accuracy")


@torch.no_grad()
def compute_metric(model: nn.Module | Predict, data: Dataset, metric: str = "accuracy", *,
                   batch_size: int = 256, device: Optional[torch.device] = None) -> float:
    """Accuracy or top-5 accuracy of ``model`` on ``data``, as a fraction in [0, 1].

    Args:
        model: an ``nn.Module`` (run in eval mode) or any callable from inputs to logits (e.g. ONNX Runtime).
        data: a dataset of ``(x, y)`` pairs.
        metric: ``accuracy`` or ``top5``.
    """
    was_training = isinstance(model, nn.Module) and model.training
    predict = _as_predict(model, device)
    k = 5 if metric == "top5" else 1
    correct, total = 0, 0
    for x, y in DataLoader(data, batch_size=batch_size):
        logits = predict(x).float().cpu()
        top = top_classes(logits, k)  # (N, k)
        correct += int((top == y[:, None]).any(dim=1).sum())
        total += len(y)
    if was_training:
        model.train()
    return correct / max(total, 1)


@torch.no_grad()
def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters), counting each weight by its logical elements.

    A layer that computes its weight from an encoding (packed integer codes, a codebook) exposes the encoder as
    ``weight_source``: its weight counts as ``prod(shape)`` parameters (nonzero: those that decode to nonzero),
    the encoder's own parameters (codebook entries) not at all; a source several layers decode (a tied weight)
    counts once, as a tied Parameter does.
    """
    total = nonzero = 0
    counted: set[int] = set()
    from torchslim.quantize.modules import weight_sources_of

    for module in model.modules():
        for source in weight_sources_of(module):
            if id(source) in counted:
                continue
            counted.add(id(source))
            w = source()
            total, nonzero = total + w.numel(), nonzero + int(torch.count_nonzero(w))
            counted |= {id(p) for p in source.parameters()}
    for p in model.parameters():
        if id(p) not in counted:
            total, nonzero = total + p.numel(), nonzero + int(torch.count_nonzero(p))
    return total, nonzero


def size_bytes(path: str | Path) -> int:
    """Bytes on disk of everything saved for a model: a file, or every file under a folder."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


@torch.no_grad()
def latency_ms(model: nn.Module | Predict, input_shape: tuple[int, ...], batch: int, *, runs: int = 30,
               warmup: int = 5, device: Optional[torch.device] = None) -> float:
    """Median wall-clock milliseconds of one forward pass on a batch, after warm-up."""
    predict = _as_predict(model, device)
    x = torch.rand(batch, *input_shape)
    for _ in range(warmup):
        predict(x)
    times = []
    for _ in range(runs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        predict(x)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def side_by_side_latency(baseline: nn.Module | Predict, compressed: nn.Module | Predict,
                         input_shape: tuple[int, ...], *, runtime_baseline: Predict | None = None, rounds: int = 11,
                         runs: int = 10, warmup: int = 5, device: Optional[torch.device] = None) -> dict[str, Any]:
    """Baseline and compressed latency measured in alternating rounds, so a burst of load on a shared machine
    slows both alike; each round is the median of ``runs`` calls, and the order turns every round.

    Args:
        runtime_baseline: the baseline as the compressed model's runtime serves it (ONNX Runtime fp32), timed in
            the same rounds: how much of the speed-up the runtime alone gives.

    Returns:
        ``baseline_latency_ms`` and ``latency_ms`` ({batch: median over rounds, ms}) and ``latency_spread``
        ({batch: {baseline_iqr_ms, compressed_iqr_ms, ratio (baseline / compressed, median of the rounds'),
        ratio_iqr, significant}}); a ratio whose interquartile range includes 1.0 is not significant. With
        ``runtime_baseline``, also ``runtime_baseline_latency_ms`` and, per batch, ``runtime_ratio`` (baseline /
        runtime baseline) and ``compression_ratio`` (runtime baseline / compressed), medians of the rounds', the
        latter with ``compression_ratio_iqr`` and ``compression_significant``.
        ``others_running``: the median over rounds of :func:`others_running` (None off Linux), with ``threads``
        (torch's) and ``cores`` (this process may use): see :func:`busy_timing`.
    """
    models = {"baseline": _as_predict(baseline, device), "compressed": _as_predict(compressed, device)}
    if runtime_baseline is not None:
        models["runtime_baseline"] = runtime_baseline
    names = list(models)
    medians: dict[str, dict[str, float]] = {name: {} for name in names}
    spread: dict[str, dict[str, Any]] = {}
    others: list[int] = []  # other processes' running threads, sampled before each round
    for key, batch in LATENCY_BATCHES.items():
        x = torch.rand(batch, *input_shape)
        for predict in models.values():
            for _ in range(warmup):
                predict(x)
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            sample = others_running()
            if sample is not None:
                others.append(sample)
            for name in names[r % len(names):] + names[:r % len(names)]:  # each takes each place in turn
                calls = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    models[name](x)
                    calls.append((time.perf_counter() - t0) * 1e3)
                times[name].append(statistics.median(calls))
        ratios = [b / c for b, c in zip(times["baseline"], times["compressed"])]
        q = {name: statistics.quantiles(values, n=4) for name, values in times.items()}
        rq = statistics.quantiles(ratios, n=4)
        for name in names:
            medians[name][key] = statistics.median(times[name])
        spread[key] = {"baseline_iqr_ms": [q["baseline"][0], q["baseline"][2]],
                       "compressed_iqr_ms": [q["compressed"][0], q["compressed"][2]],
                       "ratio": statistics.median(ratios), "ratio_iqr": [rq[0], rq[2]],
                       "significant": not rq[0] <= 1.0 <= rq[2]}
        if runtime_baseline is not None:
            runtime = times["runtime_baseline"]
            spread[key]["runtime_ratio"] = statistics.median(b / o for b, o in zip(times["baseline"], runtime))
            int8 = [o / c for o, c in zip(runtime, times["compressed"])]
            iq = statistics.quantiles(int8, n=4)
            spread[key].update(compression_ratio=statistics.median(int8), compression_ratio_iqr=[iq[0], iq[2]],
                               compression_significant=not iq[0] <= 1.0 <= iq[2])
    timed = {"baseline_latency_ms": medians["baseline"], "latency_ms": medians["compressed"],
             "latency_spread": spread, "cores": usable_cores(), "threads": torch.get_num_threads(),
             "others_running": statistics.median(others) if others else None}
    if runtime_baseline is not None:
        timed["runtime_baseline_latency_ms"] = medians["runtime_baseline"]
    return timed


def others_running() -> int | None:
    """Threads of other processes running or waiting for a core right now (Linux's /proc), None where it cannot
    be read. Why: when they take cores that torch's intra-op threads count on, a torch forward pass waits for its
    descheduled threads (a LeNet-5 call at batch 1 took 32 ms on two threads beside one busy process, 0.13 ms on
    one), while ONNX Runtime's workers stop spinning after each run: a speed-up over torch measured so is
    overstated, and alternating rounds cannot even it out."""
    import glob

    mine = f"/proc/{os.getpid()}/"
    tasks = glob.glob("/proc/[0-9]*/task/[0-9]*/stat")
    if not tasks:
        return None
    running = 0
    for path in tasks:
        if path.startswith(mine):
            continue
        try:
            with open(path, "rb") as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        running += stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"R"
    return running


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def busy_timing(timed: dict[str, Any]) -> str | None:
    """A sentence when other processes took the cores the timing needed (``timed``: metrics or
    :func:`side_by_side_latency`'s result), else None."""
    others, threads, cores = timed.get("others_running"), timed.get("threads"), timed.get("cores")
    if others is None or threads is None or cores is None or others + threads <= cores:
        return None
    return (f"Timed on a busy machine: other processes kept {others:g} thread(s) running beside this one's "
            f"{threads} on {cores} core(s), and torch's threads wait for each other when a core is taken: the "
            f"latencies, and the speed-ups over torch most, may be far off; time again when it is idle, or with "
            f"--threads {max(1, cores - int(others + 0.5))}.")


UNSTEADY_SPREAD = 2.5  # a model's slower rounds (upper quartile) this many times its faster ones (lower): unsteady


def _widest_spread(timed: dict[str, Any]) -> tuple[float, str, str, list[float]]:
    """(upper / lower quartile of a model's round times, the model, the batch, the quartiles) where the rounds
    varied most, or (1.0, ...) when the timing kept no quartiles."""
    widest = (1.0, "", "", [0.0, 0.0])
    for batch, s in sorted((timed.get("latency_spread") or {}).items()):
        for model in ("baseline", "compressed"):
            q = s.get(f"{model}_iqr_ms")
            if q and q[0] > 0 and q[1] / q[0] > widest[0]:
                widest = (q[1] / q[0], model, batch, q)
    return widest


def unsteady_timing(timed: dict[str, Any]) -> str | None:
    """A sentence when one model's rounds varied so much that its median latency means little (``timed``: metrics
    or :func:`side_by_side_latency`'s result), else None.

    Why: a 2-core virtual machine can lose a core to its host for a second, which no process list shows; torch's
    threads then wait for each other while ONNX Runtime's caller thread does the missing worker's share. Seen: a
    torch baseline's rounds at 3.5-25.9 ms (interquartile) beside an ONNX Runtime model's steady 2.7-3.0 ms, and a
    4x speed-up reported where the same recipe, timed again, measured 1.1x."""
    spread, model, batch, q = _widest_spread(timed)
    if spread <= UNSTEADY_SPREAD:
        return None
    return (f"Timed unsteadily: the {model} model's rounds at {batch.replace('_', ' ')} took {q[0]:.3g}-{q[1]:.3g} ms "
            f"(interquartile), {spread:.1f}x apart: the latencies and speed-ups may be far off; time again "
            f"(torchslim eval) when the machine is quiet.")


def timing_caveat(timed: dict[str, Any]) -> str | None:
    """What makes a timing doubtful, in a sentence (:func:`busy_timing`, else :func:`unsteady_timing`), or None."""
    return busy_timing(timed) or unsteady_timing(timed)


BUSY_RETRIES, BUSY_WAIT_S = 2, 2.0  # timings taken beside other work: how often to time again, after how long
RETRIES_ENV = "TORCHSLIM_TIMING_RETRIES"  # e.g. 0 where the machine is known to be shared (a parallel test run)


def busy_retries() -> int:
    """``BUSY_RETRIES``, or the whole number ``TORCHSLIM_TIMING_RETRIES`` gives (anything else is ignored)."""
    value = os.environ.get(RETRIES_ENV, "")
    return int(value) if value.isdigit() else BUSY_RETRIES


def timed_when_idle(time_once: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``time_once()`` (a side-by-side timing with ``others_running``), taken again after a pause while other
    processes took the cores it needed or its rounds were unsteady (:func:`timing_caveat`), up to
    :func:`busy_retries` times: the least busy, then the steadiest."""
    timed = time_once()
    for _ in range(busy_retries()):
        if timing_caveat(timed) is None:
            break
        time.sleep(BUSY_WAIT_S)
        timed = min(timed, time_once(), key=lambda t: (t["others_running"] or 0, _widest_spread(t)[0]))
    return timed


def speedup(metrics: dict[str, Any], key: str) -> float:
    """Baseline / compressed latency at one batch size: the median of the side-by-side rounds' ratios when they
    were timed so (a round slowed by load slows both, so pairing rounds steadies the figure), else the ratio of
    the two medians."""
    paired = (metrics.get("latency_spread") or {}).get(key)
    if paired is not None and "ratio" in paired:
        return paired["ratio"]
    return metrics["baseline_latency_ms"][key] / metrics["latency_ms"][key]


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the tensors a model holds: parameters, buffers and tensors it keeps as attributes (e.g. a decoded
    weight cached for inference), each storage counted once."""
    storages: dict[int, int] = {}
    for module in model.modules():
        held = [*module._parameters.values(), *module._buffers.values(), *vars(module).values()]
        for t in held:
            if torch.is_tensor(t) and t.device.type != "meta":
                storage = t.untyped_storage()
                storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(storages.values())


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: the profiler's C++ side logs its start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_allocated(events: Any) -> int:
    """The most bytes held at once by the allocations that ``events`` record (frees of memory allocated before
    the recording began are not recorded, so the running sum starts at zero)."""
    changes = sorted(((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"),
                     key=lambda change: change[0])  # by time; at equal times, in the order recorded
    held = peak = 0
    for _time, nbytes in changes:
        held += nbytes
        peak = max(peak, held)
    return peak


@torch.no_grad()
def peak_memory_bytes(model: nn.Module, input_shape: tuple[int, ...], batch: int = 64) -> int:
    """Peak bytes while ``model`` runs one batch on the CPU, measured: the tensors it holds, plus the most that
    torch's CPU allocator held at once during a forward pass (input, activations, temporaries).

    A first forward pass builds whatever the model caches for inference (decoded weights); the second is recorded
    by ``torch.profiler`` with ``profile_memory``, and the peak of the running sum of its allocations and frees
    is taken. The same model, batch and thread count give the same number. Memory that bypasses torch's
    allocator (ONNX Runtime's own arena) is not seen.
    """
    model.eval()
    model(torch.rand(batch, *input_shape))
    held = resident_bytes(model)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with _quiet_stderr(), torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        output = model(torch.rand(batch, *input_shape))  # (batch, classes)
        del output
    return held + _peak_allocated(prof.profiler.kineto_results.events())


def measure(model: nn.Module | Predict, test: Dataset, metric: str, input_shape: tuple[int, ...], *,
            module: Optional[nn.Module] = None, device: Optional[torch.device] = None,
            latency: bool = True) -> dict[str, Any]:
    """Metric on the test split plus latency (batch 1 and 64) and thread count, measured the same way for all.

    ``latency=False`` leaves out ``latency_ms``, for a caller that times the model against its baseline with
    :func:`side_by_side_latency` anyway (timing it here too would only be thrown away).
    """
    out: dict[str, Any] = {"value": compute_metric(model, test, metric, device=device),
                           "threads": torch.get_num_threads()}
    if latency:
        out["latency_ms"] = {k: latency_ms(model, input_shape, b, device=device) for k, b in LATENCY_BATCHES.items()}
    counted = module if module is not None else (model if isinstance(model, nn.Module) else None)
    if counted is not None:
        out["params"], out["nonzero_params"] = count_params(counted)
        out["peak_memory_bytes"] = peak_memory_bytes(counted.cpu(), input_shape)
    return out


def check_constraints(constraints: Any, metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each constraint the domain sets, with its limit, the measured value and whether it is met."""
    result: dict[str, dict[str, Any]] = {}
    if constraints.max_size_bytes is not None:
        result["max_size_bytes"] = {"limit": constraints.max_size_bytes, "measured": metrics["size_bytes"],
                                    "met": metrics["size_bytes"] <= constraints.max_size_bytes}
    if constraints.max_latency_ms is not None:
        for key in LATENCY_BATCHES:
            limit = getattr(constraints.max_latency_ms, key)
            if limit is not None:
                measured = metrics["latency_ms"][key]
                result[f"max_latency_ms.{key}"] = {"limit": limit, "measured": measured, "met": measured <= limit}
    if constraints.max_metric_drop is not None:
        drop = metrics["baseline_value"] - metrics["value"]
        result["max_metric_drop"] = {"limit": constraints.max_metric_drop, "measured": drop,
                                     "met": drop <= constraints.max_metric_drop + 1e-12}
    if constraints.min_metric is not None:
        result["min_metric"] = {"limit": constraints.min_metric, "measured": metrics["value"],
                                "met": metrics["value"] >= constraints.min_metric}
    if constraints.min_speedup is not None:
        for key in LATENCY_BATCHES:
            limit = getattr(constraints.min_speedup, key)
            if limit is not None:  # baseline / compressed, both measured side by side in one process
                measured = speedup(metrics, key)
                result[f"min_speedup.{key}"] = {"limit": limit, "measured": measured, "met": measured >= limit}
    if constraints.min_compression_ratio is not None:
        ratio = metrics["compression_ratio"]
        result["min_compression_ratio"] = {"limit": constraints.min_compression_ratio, "measured": ratio,
                                           "met": ratio >= constraints.min_compression_ratio}
    return result
