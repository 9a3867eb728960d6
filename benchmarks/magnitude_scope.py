"""Magnitude pruning's scope side by side: ``layer`` (each layer to the sparsity), ``global`` (one |w| threshold)
and ``lamp`` (one threshold on LAMP scores), on an MLP and on a CNN with BatchNorm.

    PYTHONPATH=src python benchmarks/magnitude_scope.py [--seeds 1] [--sparsities 0.8,0.9] [--threads 1]

Models: LeNet-300-100 on digits (built in; 20 training epochs) and tests/zoo's residual CNN (BatchNorm, grouped
and depthwise convs, SiLU; 6 epochs). For each seed, sparsity and scope one recipe runs through ``run_recipe``:
the same training (same seed: the same trained model), then a one-shot magnitude cut and 2 fine-tuning epochs.
Prints the test accuracy of each artifact as ``torchslim run`` measures it, and the worst seed of each cell; a
scope whose threshold would empty a layer is shown as ``stops`` (the stage refuses it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCOPES = ("layer", "global", "lamp")
MODELS = {  # name: (model spec, training epochs, lr)
    "lenet300_100": ({"name": "lenet300_100"}, 20, 0.003),
    "zoo resnet (BatchNorm)": ({"factory": "zoo_models:build_resnet"}, 6, 0.003),
}


def _recipe(folder: Path, model: dict, epochs: int, lr: float, sparsity: float, scope: str, seed: int) -> Path:
    recipe = {
        "domain": {"name": "digits-scope", "task": "image-classification",
                   "data": {"source": "digits", "test_fraction": 0.2, "val_fraction": 0.1, "seed": 0},
                   "model": model, "metric": "accuracy", "runtime": "torch"},
        "seed": seed,
        "stages": [{"train": {"epochs": epochs, "lr": lr, "batch_size": 32}},
                   {"prune": {"method": "magnitude", "sparsity": sparsity, "scope": scope,
                              "finetune": {"epochs": 2, "lr": 0.001}}}],
    }
    path = folder / f"recipe-{scope}-{sparsity}-{seed}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--sparsities", default="0.8,0.9")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "zoo"))  # the zoo's factory module

    from torchslim._errors import ConfigError
    from torchslim.recipe import load_recipe
    from torchslim.runner import run_recipe

    sparsities = [float(s) for s in args.sparsities.split(",")]
    quiet = lambda _m: None  # noqa: E731
    cells: dict[tuple[str, float, str], list] = {}
    baselines: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, (model, epochs, lr)) in enumerate(MODELS.items()):
            for seed in range(args.seeds):
                for sparsity in sparsities:
                    for scope in SCOPES:
                        recipe = _recipe(Path(tmp), model, epochs, lr, sparsity, scope, seed)
                        out = Path(tmp) / f"run-{index}-{scope}-{sparsity}-{seed}"
                        try:
                            metrics = run_recipe(load_recipe(recipe), out, threads=args.threads, log=quiet)
                            value = metrics["value"]
                            baselines.setdefault(name, []).append(metrics["baseline_value"])
                        except ConfigError:  # a layer would lose every weight
                            value = None
                        cells.setdefault((name, sparsity, scope), []).append(value)
                        shown = "stops" if value is None else f"{100 * value:.2f} %"
                        print(f"{name} seed {seed} sparsity {sparsity} {scope}: {shown}", file=sys.stderr, flush=True)

    def show(values: list) -> str:
        return "stops" if None in values else f"{100 * min(values):.2f} %"

    print(f"test accuracy after a one-shot magnitude cut and 2 fine-tuning epochs; worst of {args.seeds} seed(s)")
    print("| model (baseline) | sparsity | " + " | ".join(SCOPES) + " |")
    print("|---|---:|" + "---:|" * len(SCOPES))
    for name in MODELS:
        for sparsity in sparsities:
            row = [show(cells[(name, sparsity, scope)]) for scope in SCOPES]
            values = baselines.get(name, [])
            base = f"{100 * min(values):.2f}-{100 * max(values):.2f} %" if values else "?"
            print(f"| {name} ({base}) | {sparsity:.2f} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
