"""Deep Compression on digits: compression ratio and accuracy drop of the shipped artifact, 3 seeds, two models.

    PYTHONPATH=src python benchmarks/deep_compression.py                 # both models, seeds 0 1 2 (~6 min)
    PYTHONPATH=src python benchmarks/deep_compression.py --models lenet300_100 --seeds 0

Runs recipes/digits/deep_compression.yaml (LeNet-300-100) and recipes/digits/deep_compression_lenet5.yaml (LeNet-5)
through the recipe runner once per seed (``seed`` overridden, the data split fixed by the domain). Per run it prints
the per-stage table in the manner of Deep Compression's: each compressing stage's model as saved and reloaded, its
bytes before and after entropy coding, the ratio against the baseline's uncompressed fp32 file (all artifact bytes,
manifest included) and its validation accuracy; then the test accuracy of the reloaded artifact against the
baseline's. The summary checks the goals: ratio >= 40x at a mean accuracy drop <= 0.5 point, worst seed <= 1 point.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from torchslim.recipe import load_recipe
from torchslim.runner import run_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"lenet300_100": ROOT / "recipes" / "digits" / "deep_compression.yaml",
           "lenet5": ROOT / "recipes" / "digits" / "deep_compression_lenet5.yaml"}
MIN_RATIO, MAX_MEAN_DROP, MAX_WORST_DROP = 40.0, 0.005, 0.01


def _label(record: dict) -> str:
    details = [record.get("method") or record.get("student") or "",
               f"{record['bits']} bits" if "bits" in record else ""]
    return f"{record['stage']} ({', '.join(d for d in details if d)})" if any(details) else record["stage"]


def stage_table(metrics: dict) -> list[str]:
    """Deep Compression's table for one run: size after each compressing stage, then the shipped artifact."""
    lines = [f"  {'stage':<28} {'params':>7} {'nonzero':>7} {'no entropy':>10} {'bytes':>7} {'ratio':>7} "
             f"{'val acc':>7} {'test acc':>8}",
             f"  {'baseline (fp32 file)':<28} {metrics['baseline_params']:>7,} {metrics['baseline_params']:>7,} "
             f"{metrics['baseline_size_bytes']:>10,} {metrics['baseline_size_bytes']:>7,} {1:>6.2f}x {'':>7} "
             f"{100 * metrics['baseline_value']:>7.2f}%"]
    for r in metrics["stages"]:
        if "size_bytes" in r:
            lines.append(f"  {'+ ' + _label(r):<28} {r['params']:>7,} {r['nonzero_params']:>7,} "
                         f"{r['size_bytes_no_entropy']:>10,} {r['size_bytes']:>7,} {r['compression_ratio']:>6.2f}x "
                         f"{100 * r['artifact_val_metric']:>6.2f}%")
    lines.append(f"  {'shipped artifact':<28} {metrics['params']:>7,} {metrics['nonzero_params']:>7,} "
                 f"{metrics['size_bytes_no_entropy']:>10,} {metrics['size_bytes']:>7,} "
                 f"{metrics['compression_ratio']:>6.2f}x {'':>7} {100 * metrics['value']:>7.2f}%")
    return lines


def run(model: str, seed: int, out: Path) -> dict:
    recipe = load_recipe(RECIPES[model], [f"seed={seed}"])
    return run_recipe(recipe, out / f"{model}-seed{seed}", log=lambda _message: None)


def summarize(model: str, runs: list[dict]) -> str:
    drops = [m["baseline_value"] - m["value"] for m in runs]
    ratios = [m["compression_ratio"] for m in runs]
    met = min(ratios) >= MIN_RATIO and statistics.fmean(drops) <= MAX_MEAN_DROP and max(drops) <= MAX_WORST_DROP
    return (f"{model:<13} ratio mean {statistics.fmean(ratios):.1f}x (min {min(ratios):.1f}x, "
            f"{statistics.fmean(m['size_bytes'] for m in runs):,.0f} B)  accuracy drop mean "
            f"{100 * statistics.fmean(drops):+.2f} pt, worst {100 * max(drops):+.2f} pt  "
            f"goal (>= {MIN_RATIO:.0f}x, mean drop <= {100 * MAX_MEAN_DROP:.1f}, worst <= {100 * MAX_WORST_DROP:.0f}): "
            f"{'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, more only contend
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        summaries = []
        for model in args.models:
            runs = []
            for seed in args.seeds:
                start = time.perf_counter()
                metrics = run(model, seed, out)
                runs.append(metrics)
                drop = metrics["baseline_value"] - metrics["value"]
                print(f"{model} seed {seed}: {metrics['compression_ratio']:.2f}x, test accuracy "
                      f"{100 * metrics['baseline_value']:.2f}% -> {100 * metrics['value']:.2f}% "
                      f"(drop {100 * drop:+.2f} pt), {time.perf_counter() - start:.0f}s", flush=True)
                print("\n".join(stage_table(metrics)), flush=True)
            summaries.append(summarize(model, runs))
        print("\n".join(summaries))


if __name__ == "__main__":
    main()
