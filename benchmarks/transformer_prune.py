"""Half the heads and FFN neurons of a Transformer encoder classifier: the old settings against the new, per seed.

    PYTHONPATH=src python benchmarks/transformer_prune.py [--seeds 0,1,2] [--threads 1]

The model is tests/zoo/zoo_models.py's RowTransformer (rows of an 8x8 digit as 8 tokens, d_model 32, 4 heads,
FFN 64, 2 layers), trained 30 epochs on the built-in digits source per seed. Both methods remove 50 % of each
layer's heads and FFN neurons and fine-tune 10 epochs in total:

* old: ``importance: l2``, one shot, fine-tuning on the labels at lr 1e-3;
* new: ``importance: output_taylor`` (mask-gradient Taylor on 8 calibration batches), 3 polynomial steps,
  fine-tuning at lr 3e-3 with ``distill`` (soft targets of the unpruned model, T = 4, alpha = 0.9).

Printed: test accuracy before / after and the drop in points (360 test images: one image is 0.28 points).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "zoo"))

import zoo_models  # noqa: E402
from torchslim.data import load_splits  # noqa: E402
from torchslim.domain import DataSpec  # noqa: E402
from torchslim.prune import Distill, Finetune, Schedule, StructuredConfig, prune_  # noqa: E402
from torchslim.train import TrainConfig, fit  # noqa: E402

METHODS = {
    "old": StructuredConfig(sparsity=0.5, importance="l2", finetune=Finetune(epochs=10, lr=1e-3, batch_size=32)),
    "new": StructuredConfig(sparsity=0.5, importance="output_taylor", schedule=Schedule("polynomial", 3),
                            finetune=Finetune(epochs=10, lr=3e-3, batch_size=32, distill=Distill(4.0, 0.9))),
}
CALIBRATION_BATCHES = 8


def accuracy(model: torch.nn.Module, data) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).float().mean().item()


def trained_model(splits, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = zoo_models.build_transformer(layers=2)
    fit(model, splits.train, splits.val, TrainConfig(epochs=30, lr=3e-3, batch_size=32), seed=seed)
    return model.eval()


def prune_copy(model: torch.nn.Module, config: StructuredConfig, splits, seed: int) -> torch.nn.Module:
    """A pruned, fine-tuned copy of ``model``."""
    x, y = splits.train.tensors
    calibration = [(x[i * 64:(i + 1) * 64], y[i * 64:(i + 1) * 64]) for i in range(CALIBRATION_BATCHES)]

    def finetune(m, epochs, after_step, step, steps, loss_fn=None):
        fit(m, splits.train, splits.val, TrainConfig(epochs=epochs, lr=config.finetune.lr, batch_size=32),
            seed=seed + 1, after_step=after_step, loss_fn=loss_fn)

    pruned = copy.deepcopy(model)
    torch.manual_seed(seed)
    prune_(pruned, config, calibration=calibration, finetune=finetune)
    return pruned.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    splits = load_splits(DataSpec(source="digits"), input_shape=(1, 8, 8))
    drops: dict[str, list[float]] = {m: [] for m in METHODS}
    print(f"{'seed':>4} {'before':>7} | " + " | ".join(f"{m + ' after':>10} {'drop':>6}" for m in METHODS))
    for seed in (int(s) for s in args.seeds.split(",")):
        model = trained_model(splits, seed)
        before = 100 * accuracy(model, splits.test)
        cells = []
        for name, config in METHODS.items():
            after = 100 * accuracy(prune_copy(model, config, splits, seed), splits.test)
            drops[name].append(before - after)
            cells.append(f"{after:10.2f} {before - after:6.2f}")
        print(f"{seed:>4} {before:7.2f} | " + " | ".join(cells), flush=True)
    for name, d in drops.items():
        print(f"{name}: mean drop {sum(d) / len(d):.2f} points, worst seed {max(d):.2f}")


if __name__ == "__main__":
    main()
