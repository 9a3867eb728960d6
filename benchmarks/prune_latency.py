"""Structured pruning of LeNet-5 on digits: accuracy, parameters and batch-64 latency, baseline against pruned.

    PYTHONPATH=src python benchmarks/prune_latency.py [--out runs/bench-structured-lenet5] [--reuse]

Runs recipes/digits/structured_lenet5.yaml (train with shifts, remove 50% of the channels of conv1/conv2/fc1 in
three steps, fine-tuning after each) through the recipe runner, reloads the pruned artifact, and times one batch of 64 side by side (rounds
alternate between the models, median of medians) for: the dense baseline LeNet-5, the pruned artifact, and a
LeNet-5 built at half width by hand (the speed pruning should approach). Dense fp32 speed does not depend on the
weight values, so the baseline is timed on a freshly built LeNet-5 of the default widths; its accuracy is the
trained baseline's, from metrics.json. Timed in PyTorch at the default thread count and at one thread, and in
ONNX Runtime fp32 at one thread. The load average is printed: on a machine busier than its cores, multi-threaded
timings measure contention, and the one-thread rows are the ones to read. ``--reuse`` skips the run when --out
already holds its results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from torchslim.artifact import load_artifact
from torchslim.evaluate import latency_ms
from torchslim.models._reference import LeNet5
from torchslim.recipe import load_recipe
from torchslim.runner import run_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "digits" / "structured_lenet5.yaml"
SHAPE = (1, 8, 8)
ROUNDS = 7


def side_by_side(models: dict[str, object], batch: int = 64) -> dict[str, float]:
    """Median over rounds of each model's median batch latency (ms); models alternate inside every round."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(ROUNDS):
        for name, model in models.items():
            times[name].append(latency_ms(model, SHAPE, batch))
    return {name: statistics.median(t) for name, t in times.items()}


def onnx_sessions(models: dict[str, torch.nn.Module]) -> dict[str, object]:
    from torchslim.export.onnx_export import export_onnx
    from torchslim.export.runtime import OrtSession

    return {name: OrtSession(export_onnx(m, torch.rand(2, *SHAPE)), intra_op_threads=1)
            for name, m in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-structured-lenet5")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if args.reuse and (out / "metrics.json").is_file():
        metrics = json.loads((out / "metrics.json").read_text())
    else:
        metrics = run_recipe(load_recipe(RECIPE), out, log=lambda m: print(m, file=sys.stderr))
    pruned, _ = load_artifact(out / "artifact")
    models = {"baseline": LeNet5().eval(), "pruned": pruned.eval(), "half width by hand": LeNet5(width=0.5).eval()}
    record = next(r for r in metrics["stages"] if r["stage"] == "prune")

    default_threads = torch.get_num_threads()
    torch_ms = side_by_side(models)
    torch.set_num_threads(1)
    torch_1 = side_by_side(models)
    torch.set_num_threads(default_threads)
    ort_ms = side_by_side(onnx_sessions(models))

    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"recipe {RECIPE.relative_to(ROOT)}; removed: {', '.join(record['removed_units'])}")
    print(f"accuracy (test): baseline {100 * metrics['baseline_value']:.2f} %, pruned "
          f"{100 * metrics['value']:.2f} %, drop {100 * (metrics['baseline_value'] - metrics['value']):.2f} points")
    print(f"params: baseline {params['baseline']:,}, pruned {params['pruned']:,} "
          f"({100 * (params['pruned'] / params['baseline'] - 1):+.1f} %)")
    print()
    header = f"{'batch-64 latency (ms)':<34}" + "".join(f"{n:>20}" for n in models) + f"{'baseline/pruned':>17}"
    print(header)
    for label, ms in ((f"torch fp32, {default_threads} thread(s)", torch_ms), ("torch fp32, 1 thread", torch_1),
                      ("onnxruntime fp32, 1 thread", ort_ms)):
        print(f"{label:<34}" + "".join(f"{ms[n]:>20.3f}" for n in models) +
              f"{ms['baseline'] / ms['pruned']:>16.2f}x")
    print(f"\nrun's ratio recorded in metrics.json: {metrics.get('latency_ratio_batch_64', float('nan')):.2f}x "
          f"({metrics.get('threads')} thread(s))")


if __name__ == "__main__":
    main()
