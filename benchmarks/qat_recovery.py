"""How much of the accuracy lost by 4-bit post-training quantization does 4-bit QAT win back (MNIST-1D CNN)?

    PYTHONPATH=src python benchmarks/qat_recovery.py [--threads 1]

Trains the baseline once with the train stage of recipes/mnist1d/qat_4bit.yaml, then from that same model:
PTQ = 4-bit per-channel symmetric weight-only quantization (what QAT converts to, without training);
QAT = the recipe's quantize stage (fake quantization + straight-through fine-tuning, then packed 4-bit weights).
Every accuracy is measured on the test split, on the artifact saved and reloaded from disk.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mnist1d" / "qat_4bit.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from torchslim.artifact import load_artifact, save_artifact
    from torchslim.evaluate import compute_metric
    from torchslim.quantize import WeightOnlyConfig, quantize_
    from torchslim.recipe import load_recipe
    from torchslim.runner import prepare, seed_everything
    from torchslim.stages import STAGES

    recipe = load_recipe(RECIPE)
    ctx = prepare(recipe, log=lambda _m: None)
    train, quant = recipe.stages
    t0 = time.perf_counter()
    STAGES["train"].run(ctx, train.config)
    train_s = time.perf_counter() - t0
    baseline = copy.deepcopy(ctx.model).cpu().eval()
    ctx.baseline = baseline

    qat_cfg = quant.config.config
    ptq = copy.deepcopy(baseline)
    quantize_(ptq, WeightOnlyConfig(bits=qat_cfg.bits, granularity=qat_cfg.granularity, symmetric=qat_cfg.symmetric))

    ctx.model, ctx.stage_index = copy.deepcopy(baseline), quant.index
    seed_everything(recipe.seed + quant.index)
    t0 = time.perf_counter()
    record = STAGES["quantize"].run(ctx, quant.config)
    qat_s = time.perf_counter() - t0

    def reloaded_accuracy(model: torch.nn.Module) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            path = save_artifact(model.cpu(), Path(tmp) / "a", architecture=ctx.architecture)
            return compute_metric(load_artifact(path)[0], ctx.splits.test, ctx.metric)

    base_acc, ptq_acc, qat_acc = (reloaded_accuracy(m) for m in (baseline, ptq, ctx.model))
    lost = base_acc - ptq_acc
    recovered = (qat_acc - ptq_acc) / lost if lost > 0 else float("nan")
    print(f"MNIST-1D CNN, {qat_cfg.bits}-bit per-channel symmetric weights, test split ({len(ctx.splits.test)} "
          f"samples), {args.threads} thread(s)")
    print(f"baseline training {train.config.epochs} epochs lr {train.config.lr} ({train_s:.0f} s); "
          f"QAT {qat_cfg.finetune.epochs} epochs lr {qat_cfg.finetune.lr} ({qat_s:.0f} s)")
    print(f"{'model':<10}{'accuracy':>10}")
    for name, acc in (("fp32", base_acc), ("PTQ 4-bit", ptq_acc), ("QAT 4-bit", qat_acc)):
        print(f"{name:<10}{100 * acc:>9.2f}%")
    print(f"lost by PTQ: {100 * lost:.2f} points; recovered by QAT: {100 * (qat_acc - ptq_acc):.2f} points "
          f"= {recovered:.2f} of the loss (QAT val {100 * record['val_metric']:.2f}%)")


if __name__ == "__main__":
    main()
