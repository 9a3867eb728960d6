"""Structured pruning with and without the least-squares refit of the layers that lost inputs (``reconstruct``).

    PYTHONPATH=src python benchmarks/reconstruct.py [--models lenet5,lenet300_100,resnet,conv1d,transformer,tokens]
                                                    [--seeds 0,1] [--threads 1]

Each model is trained 15 epochs on the built-in digits source per seed (Adam, lr 1e-3), then pruned by
``StructuredConfig(sparsity, importance="l2")`` at 50 % and 75 % of every layer's units, one shot, with no
fine-tuning and with 3 epochs of it, once plainly and once with ``reconstruct=True`` (8 calibration batches of 64
training images). The models: the built-in LeNet-5 and LeNet-300-100, and tests/zoo/zoo_models.py's residual CNN
(BatchNorm, grouped and depthwise convs, concatenation), Conv1d model, row transformer and pixel-token attention
model. Printed: each cell's test accuracy drop in points (360 test images: one image is 0.28), per seed, then the
mean and the worst seed per model.
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
from torchslim.models import BUILTIN_MODELS  # noqa: E402
from torchslim.prune import Finetune, StructuredConfig, prune_  # noqa: E402
from torchslim.train import TrainConfig, fit  # noqa: E402

BUILDERS = {"lenet5": BUILTIN_MODELS["lenet5"], "lenet300_100": BUILTIN_MODELS["lenet300_100"],
            **{name: zoo_models.FACTORIES[name] for name in ("resnet", "conv1d", "transformer", "tokens")}}
CELLS = [(sparsity, epochs, refit) for sparsity in (0.5, 0.75) for epochs in (0, 3) for refit in (False, True)]
LR, BATCH = 1e-3, 32


def accuracy(model, data) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return 100 * (model.eval()(x).argmax(1) == y).float().mean().item()


def drops(name: str, splits, seed: int) -> tuple[float, list[float]]:
    """Test accuracy of the trained model and the drop of each cell of CELLS."""
    torch.manual_seed(seed)
    model = BUILDERS[name]()
    fit(model, splits.train, splits.val, TrainConfig(epochs=15, lr=LR, batch_size=BATCH), seed=seed)
    before = accuracy(model, splits.test)
    x, y = splits.train.tensors
    calibration = [(x[i * 64:(i + 1) * 64], y[i * 64:(i + 1) * 64]) for i in range(8)]

    def finetune(m, epochs, after_step, step, steps, loss_fn=None):
        fit(m, splits.train, splits.val, TrainConfig(epochs=epochs, lr=LR, batch_size=BATCH), seed=seed + 1,
            after_step=after_step, loss_fn=loss_fn)

    out = []
    for sparsity, epochs, refit in CELLS:
        pruned = copy.deepcopy(model)
        torch.manual_seed(seed)
        config = StructuredConfig(sparsity, importance="l2", reconstruct=refit,
                                  finetune=Finetune(epochs=epochs, lr=LR, batch_size=BATCH) if epochs else None)
        prune_(pruned, config, calibration=calibration, finetune=finetune)
        out.append(before - accuracy(pruned, splits.test))
    return before, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(BUILDERS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    splits = load_splits(DataSpec(source="digits"), input_shape=(1, 8, 8))
    heads = [f"{int(s * 100)}% {e}ep {'refit' if r else 'plain'}" for s, e, r in CELLS]
    print(f"{'model':<13} {'seed':>4} {'acc':>6} | " + " ".join(f"{h:>15}" for h in heads))
    summary = {}
    for name in args.models.split(","):
        rows = []
        for seed in (int(s) for s in args.seeds.split(",")):
            before, cells = drops(name, splits, seed)
            rows.append(cells)
            print(f"{name:<13} {seed:>4} {before:6.2f} | " + " ".join(f"{d:15.2f}" for d in cells), flush=True)
        summary[name] = [(sum(c) / len(c), max(c)) for c in zip(*rows)]
    print("\nmean / worst seed, points:")
    print(f"{'model':<13} | " + " ".join(f"{h:>15}" for h in heads))
    for name, cells in summary.items():
        print(f"{name:<13} | " + " ".join(f"{m:7.2f} /{w:6.2f}" for m, w in cells))


if __name__ == "__main__":
    main()
