"""Every compression method on every layer type: the method x model table, measured in one run.

    PYTHONPATH=src python benchmarks/architectures.py [--seeds 1] [--threads 1] [--models resnet,tokens]
        [--methods dynamic,static]

The models are tests/zoo/zoo_models.py (a residual CNN with BatchNorm, grouped and depthwise convs, a residual add
and a concatenation; a Conv1d+BatchNorm1d+GELU model; a Transformer encoder; a pixel-token model with nn.Embedding
and nn.MultiheadAttention; the same Transformer encoder at BERT-mini's proportions, "encoder"), each trained on
digits once per seed, and each method is the one the zoo tests run (tests/zoo/zoo_support.py). Every compressed
model is saved as an artifact, reloaded through its factory and measured as ``torchslim run`` measures it:
``measure_in_runtime`` in ONNX Runtime on the stored int8 model for static/dynamic/qat, in torch otherwise, its
latency timed against the trained fp32 model in torch eager in alternating rounds (``side_by_side_latency``,
same process, at most the same threads: each ONNX Runtime session on one thread or all, whichever is faster; the
speed-up is the median of the rounds' ratios). An int8 model is also timed so against the fp32 model exported to
ONNX Runtime.

A cell is "drop / xsize / xspeed": test-accuracy drop in points, fp32 artifact bytes / artifact bytes, and
baseline batch-64 latency / compressed batch-64 latency (means over seeds; for int8 in ONNX Runtime, the speed-up
against ONNX Runtime fp32 follows in brackets). With several seeds a second table gives the worst seed of each
figure. A method that fails says how.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ZOO_DIR = Path(__file__).resolve().parents[1] / "tests" / "zoo"
sys.path.insert(0, str(ZOO_DIR))

from zoo_support import (INPUT_SHAPE, INT8_ORT, MODELS, PRUNE, QUANT, apply_method, architecture,  # noqa: E402
                         train_model)

# Why a compressed model can run slower than the fp32 torch baseline (footnotes under the table).
WHY_SLOWER = {
    "static": "the int8 graph quantizes and dequantizes activations around every op that stays float (LayerNorm, "
              "GELU, softmax's neighbours, the embedding lookup), on the pixel-token model over (N·64, d) "
              "activations, and ONNX Runtime runs even the fp32 export of such a model slower than torch eager "
              "(line below)",
    "dynamic": "ONNX Runtime quantizes each Linear's input at run time; at d = 32 the int8 MatMuls are too small to "
               "repay it, and ONNX Runtime runs even the fp32 export of such a model slower than torch eager "
               "(line below)",
    "qat": "as static: the converted 8-bit QAT model is the same kind of int8 graph",
    "weight": "runtime torch: the 4-bit weights are decoded to float once, then the same fp32 kernels run",
    "kmeans": "runtime torch: the codebook is decoded to float weights once, then the same fp32 kernels run",
    "magnitude": "unstructured zeros are still multiplied: the dense fp32 kernels do the same work",
    "activation": "only a few units are removed: almost the same work",
    "structured": "on a model this small, torch's per-layer call overhead, not arithmetic, sets the latency",
}


def _ort_fp32(base):
    """The fp32 model exported to ONNX Runtime, timed as ``torchslim run`` times it (``runtime_baseline``: on one
    thread or as many as torch, whichever is faster)."""
    from torchslim.export.measure import runtime_baseline

    return runtime_baseline(base, INPUT_SHAPE)


def _speedup(baseline, compressed) -> float:
    """baseline / compressed batch-64 latency, timed side by side as ``torchslim run`` times it."""
    from torchslim.evaluate import side_by_side_latency, speedup

    return speedup(side_by_side_latency(baseline, compressed, INPUT_SHAPE), "batch_64")


def _measure_cell(name: str, method: str, base, base_value: float, fp32_bytes: int, splits, seed: int,
                  folder: Path, ort_fp32) -> tuple[float, ...]:
    """(drop in points, size ratio, batch-64 speed-up over torch eager[, over ONNX Runtime fp32 for int8 in ORT])
    of ``method`` on a copy of the trained ``base``."""
    from torchslim.artifact import artifact_size, load_artifact, save_artifact
    from torchslim.export.measure import measure_in_runtime, runtime_predict

    _, model = apply_method(copy.deepcopy(base), method, splits, seed=seed)
    path = save_artifact(model, folder / f"{name}-{method}-{seed}", architecture=architecture(name),
                         extra={"input_shape": list(INPUT_SHAPE)})
    reloaded, manifest = load_artifact(path, trust_code=True, code_dir=ZOO_DIR)
    runtime = "onnxruntime" if method in INT8_ORT else "torch"
    measured = measure_in_runtime(reloaded, manifest, splits.test, "accuracy", INPUT_SHAPE, runtime, latency=False)
    predict = runtime_predict(reloaded, manifest, runtime, fastest=True)  # timed as `torchslim run` times it
    cell = (100 * (base_value - measured["value"]), fp32_bytes / artifact_size(path), _speedup(base, predict))
    return cell + ((_speedup(ort_fp32, predict),) if runtime == "onnxruntime" else ())


def _show(cell: tuple[float, ...]) -> str:
    text = "{:+.2f} / {:.2f}× / {:.2f}×".format(*cell[:3])
    return text + (" ({:.2f}×)".format(cell[3]) if len(cell) > 3 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (each trains every model again)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--methods", default=",".join(QUANT + PRUNE), help="comma-separated subset")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]

    from torchslim.artifact import artifact_bytes
    from torchslim.data import load_splits
    from torchslim.domain import DataSpec
    from torchslim.evaluate import measure
    from torchslim.export.cpu import cpu_int8_features

    splits = load_splits(DataSpec(source="digits"), input_shape=INPUT_SHAPE)
    cells: dict[tuple[str, str], list] = {}
    baselines: dict[str, list[float]] = {m: [] for m in models}
    ort_fp32: dict[str, list[float]] = {m: [] for m in models}  # torch eager / ORT fp32, batch-64 latency
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for name in models:
                base = train_model(name, splits, seed=seed)
                base_value = measure(base, splits.test, "accuracy", INPUT_SHAPE)["value"]
                baselines[name].append(base_value)
                session = _ort_fp32(base)
                ort_fp32[name].append(_speedup(base, session))
                fp32_bytes = artifact_bytes(base, architecture=architecture(name), compress=False,
                                            extra={"input_shape": list(INPUT_SHAPE)})
                for method in methods:
                    try:
                        cell = _measure_cell(name, method, base, base_value, fp32_bytes, splits, seed, Path(tmp),
                                             session)
                    except Exception as exc:  # noqa: BLE001  (the table says which method fails, and how)
                        cell = f"fails: {type(exc).__name__}"
                        print(f"{name} {method} seed {seed}: {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:160]}", file=sys.stderr)
                    cells.setdefault((name, method), []).append(cell)
                    shown = cell if isinstance(cell, str) else _show(cell)
                    print(f"{name} {method} seed {seed}: {shown}", file=sys.stderr, flush=True)

    flags = [k for k, v in cpu_int8_features().items() if v is True]
    print(f"digits, {len(splits.test)} test images, {args.seeds} seed(s), {args.threads} thread(s); "
          f"CPU int8 features: {', '.join(flags) or 'none'}")
    print("baseline test accuracy: " + ", ".join(f"{m} {100 * statistics.mean(v):.2f} %"
                                                 for m, v in baselines.items()))
    print()
    print("| method | " + " | ".join(models) + " |")
    print("|---|" + "---:|" * len(models))
    slower: dict[str, list[str]] = {}
    for method in methods:
        row = []
        for name in models:
            runs = cells[(name, method)]
            failed = [r for r in runs if isinstance(r, str)]
            if failed:
                row.append(failed[0])
                continue
            mean = tuple(statistics.mean(v) for v in zip(*runs))
            row.append(_show(mean))
            if round(mean[2], 2) < 1.0:
                slower.setdefault(method, []).append(name)
        runtime = "ORT int8" if method in INT8_ORT else "torch"
        print(f"| {method} ({runtime}) | " + " | ".join(row) + " |")
    if args.seeds > 1:  # the worst seed of each figure: largest drop, smallest ratios
        print(f"\nworst of {args.seeds} seeds:\n")
        print("| method | " + " | ".join(models) + " |")
        print("|---|" + "---:|" * len(models))
        for method in methods:
            row = []
            for name in models:
                runs = [r for r in cells[(name, method)] if not isinstance(r, str)]
                worst = tuple(f(v) for f, v in zip((max, min, min, min), zip(*runs))) if runs else None
                row.append(_show(worst) if worst else "fails")
            print(f"| {method} | " + " | ".join(row) + " |")
    print()
    print("drop: test-accuracy points lost (negative: gained); ×size: fp32 artifact bytes / artifact bytes; "
          "×speed: torch fp32 eager batch-64 latency / the compressed model's in its runtime (in brackets: ONNX "
          "Runtime fp32's / the int8 model's).")
    for method, names in slower.items():
        print(f"- ×speed < 1 for {method} ({', '.join(names)}): {WHY_SLOWER[method]}.")
    print("- ×speed of the fp32 baseline itself exported to ONNX Runtime (its faster of one thread and all): "
          + ", ".join(f"{m} {statistics.mean(v):.2f}×" for m, v in ort_fp32.items())
          + ": the part of an int8 ×speed that the runtime, not int8, accounts for.")
    if slower:
        print("- Where the compressed model runs the same fp32 kernels as the baseline (weight, kmeans, magnitude; "
              "activation removes a few units), a ×speed away from 1.00 is timing noise.")


if __name__ == "__main__":
    main()
