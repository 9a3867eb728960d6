"""Dynamic int8 of a Transformer encoder: attention's q/k/v in-projection as three int8 products of one quantized
input, against the same int8 graph with one packed product and a Split, side by side.

    PYTHONPATH=src python benchmarks/qkv_projection.py [--seed 0] [--threads 1] [--rounds 25]

The model is tests/zoo/zoo_models.py's ``build_encoder`` (d 256, 4 heads, FFN 1024, 4 layers, 8 tokens), trained on
digits as the zoo trains it. Both graphs come from ``export.ort_quant.quantize_dynamic_onnx`` on the same export:
one as shipped, one with ``split_qkv_projection_`` turned off (each packed in-projection a DynamicQuantizeMatMul
and its split; the attention core is the same node in both). In each round, torch fp32 eager and the two ONNX
Runtime sessions are timed one after the other on one batch of 64 test images (median of 30 calls each); printed:
the medians over the rounds and the median of the rounds' speed-ups over torch, with their range, and the largest
output difference.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "zoo"))

from zoo_support import INPUT_SHAPE, apply_method, train_model  # noqa: E402


def _graphs(model, splits) -> dict[str, bytes]:
    """The int8 graph of ``model`` with three q/k/v products and with one packed product (the same quantized
    weights)."""
    import torchslim.export.ort_quant as ort_quant
    from torchslim.quantize._layout import int8_onnx_of

    graphs = {}
    original = ort_quant.split_qkv_projection_
    for name, rewrite in (("three products", original), ("packed + Split", lambda _m: 0)):
        ort_quant.split_qkv_projection_ = rewrite
        try:
            _, quantized = apply_method(copy.deepcopy(model), "dynamic", splits)
        finally:
            ort_quant.split_qkv_projection_ = original
        graphs[name] = int8_onnx_of(quantized)
    return graphs


def _median_ms(fn, calls: int = 30) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()

    from torchslim.data import load_splits
    from torchslim.domain import DataSpec
    from torchslim.export.runtime import OrtSession, optimized_op_counts

    torch.set_num_threads(args.threads)
    splits = load_splits(DataSpec(source="digits"), input_shape=INPUT_SHAPE)
    model = train_model("encoder", splits, seed=args.seed)
    graphs = _graphs(model, splits)
    sessions = {name: OrtSession(data, intra_op_threads=args.threads) for name, data in graphs.items()}
    x = splits.test.tensors[0][:64]
    runs = {"torch fp32 eager": lambda: model(x), **{name: (lambda s=s: s(x)) for name, s in sessions.items()}}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            _median_ms(fn, calls=10)
        for _ in range(args.rounds):
            for name, fn in runs.items():
                times[name].append(_median_ms(fn))
        outputs = {name: np.asarray(s(x)) for name, s in sessions.items()}
    print(f"encoder seed {args.seed}, {args.threads} thread(s), batch 64, {args.rounds} rounds")
    for name, data in graphs.items():
        ops = optimized_op_counts(data)
        print(f"  {name}: MatMulIntegerToFloat {ops.get('MatMulIntegerToFloat', 0)}, DynamicQuantizeMatMul "
              f"{ops.get('DynamicQuantizeMatMul', 0)}, Split {ops.get('Split', 0)}, Attention "
              f"{ops.get('Attention', 0) + ops.get('MultiHeadAttention', 0)}")
    base = times["torch fp32 eager"]
    print(f"{'':<18} {'ms (median)':>12} {'x torch (median of rounds)':>27} {'range':>14}")
    for name, ms in times.items():
        ratios = [b / t for b, t in zip(base, ms)]
        print(f"{name:<18} {statistics.median(ms):>12.2f} {statistics.median(ratios):>27.2f} "
              f"{min(ratios):>6.2f}-{max(ratios):<6.2f}")
    three, packed = outputs["three products"], outputs["packed + Split"]
    print(f"largest output difference between the two int8 graphs: {float(np.abs(three - packed).max()):.2e}")


if __name__ == "__main__":
    main()
