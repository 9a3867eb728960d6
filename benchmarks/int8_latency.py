"""Static int8 LeNet-5 on digits in ONNX Runtime against fp32 in ONNX Runtime and fp32 in torch, side by side.

    PYTHONPATH=src python benchmarks/int8_latency.py [--threads 1] [--runs 300]

Runs recipes/digits/lenet5_baseline.yaml (the fp32 model) and recipes/digits/quant_static_lenet5.yaml (the same
training, then static int8) and loads both artifacts: torch fp32 = the fp32 module, fp32-ORT = its ONNX export in
ONNX Runtime, int8-ORT = the artifact's int8 model (QLinearConv/QGemm kernels). Prints test accuracy, median
latency at batch 1 and 64 (same thread count everywhere) and the batch-64 ratios fp32-ORT / int8-ORT and
torch-fp32 / int8-ORT.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "digits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import torchslim
    from torchslim.data import load_splits
    from torchslim.evaluate import compute_metric, latency_ms
    from torchslim.export import cpu_int8_features, quantized_kernels
    from torchslim.recipe import load_recipe
    from torchslim.runner import run_recipe

    quiet = lambda _m: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        fp32_run = run_recipe(load_recipe(RECIPES / "lenet5_baseline.yaml"), Path(tmp) / "fp32", log=quiet)
        int8_recipe = load_recipe(RECIPES / "quant_static_lenet5.yaml")
        int8_run = run_recipe(int8_recipe, Path(tmp) / "int8", log=quiet)
        fp32_art, int8_art = Path(tmp) / "fp32" / "artifact", Path(tmp) / "int8" / "artifact"
        models = {
            "torch fp32": torchslim.load(fp32_art),
            "ORT fp32": torchslim.load(fp32_art, runtime="onnxruntime", intra_op_threads=args.threads),
            "ORT int8": torchslim.load(int8_art, runtime="onnxruntime", intra_op_threads=args.threads),
            "torch int8 (simulated)": torchslim.load(int8_art),
        }
        assert models["ORT int8"].int8 and not models["ORT fp32"].int8
        kernels = quantized_kernels(models["ORT int8"].model)
        domain = int8_recipe.domain
        test = load_splits(domain.data, base_dir=domain.base_dir, input_shape=(1, 8, 8)).test
        rows = {}
        for name, model in models.items():
            rows[name] = (compute_metric(model, test),
                          latency_ms(model, (1, 8, 8), 1, runs=args.runs, warmup=20),
                          latency_ms(model, (1, 8, 8), 64, runs=args.runs, warmup=20))

    flags = [k for k, v in cpu_int8_features().items() if v is True]
    print(f"LeNet-5 on digits ({len(test)} test samples), {args.threads} thread(s), median of {args.runs} runs; "
          f"CPU int8 features: {', '.join(flags) or 'none'}; int8 kernels: {kernels}")
    print(f"baseline recipe test accuracy {100 * fp32_run['value']:.2f}%, int8 recipe {100 * int8_run['value']:.2f}% "
          f"(its own baseline {100 * int8_run['baseline_value']:.2f}%; metrics.json latency b64 "
          f"{int8_run['latency_ms']['batch_64']:.3f} ms vs torch fp32 {int8_run['baseline_latency_ms']['batch_64']:.3f} ms)")
    print(f"{'model':<24}{'accuracy':>10}{'batch 1 ms':>12}{'batch 64 ms':>13}")
    for name, (acc, b1, b64) in rows.items():
        print(f"{name:<24}{100 * acc:>9.2f}%{b1:>12.4f}{b64:>13.4f}")
    int8_b64 = rows["ORT int8"][2]
    print(f"batch-64 speed-up of ORT int8: fp32-ORT / int8-ORT = {rows['ORT fp32'][2] / int8_b64:.2f}x, "
          f"torch-fp32 / int8-ORT = {rows['torch fp32'][2] / int8_b64:.2f}x")
    print(f"accuracy drop fp32 -> int8 (ORT): {100 * (rows['torch fp32'][0] - rows['ORT int8'][0]):.2f} points; "
          f"ORT int8 vs torch simulation: {100 * abs(rows['ORT int8'][0] - rows['torch int8 (simulated)'][0]):.2f}")


if __name__ == "__main__":
    main()
