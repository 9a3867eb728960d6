"""An ONNX graph with its intermediate shapes annotated (``value_info``) against the same graph without them, side by
side in ONNX Runtime.

    PYTHONPATH=src python benchmarks/onnx_shapes.py [--threads 1] [--rounds 15]

Artifacts store their int8 graph without ``value_info`` (``quantize._layout.compact_onnx``: ONNX Runtime infers
shapes itself), while the graph the quantize stage made in memory has the exporter's. This measures whether putting
them back at load (``onnx.shape_inference``) would be worth it: for each model of tests/zoo (untrained: latency only)
and each graph (the fp32 export, dynamic int8 and static int8, built as the quantize stage builds them), the graph
with every ``value_info`` removed ("bare") and the same graph with shapes inferred ("annotated") are timed one after
the other (median of 20 calls on a random batch each) in alternating rounds. Printed: the medians over the rounds
and the median of the rounds' ratios (bare / annotated: above 1, the annotations make it faster) with their range,
at batch 64 and batch 1.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "zoo"))

import zoo_models  # noqa: E402

MODELS = ("encoder", "transformer", "tokens", "conv1d", "resnet")
INPUT_SHAPE = (1, 8, 8)


def _graphs(model: torch.nn.Module) -> dict[str, bytes]:
    """fp32, dynamic int8 and static int8 ONNX graphs of ``model``, as the quantize stage makes them."""
    from torchslim.quantize import DynamicConfig, StaticConfig, quantize_
    from torchslim.quantize._layout import int8_onnx_of

    from torchslim.export.onnx_export import export_onnx

    x = torch.rand(64, *INPUT_SHAPE)
    graphs = {"fp32": export_onnx(model, x[:2])}
    for name, config in (("dynamic", DynamicConfig()), ("static", StaticConfig())):
        quantized = copy.deepcopy(model)
        quantize_(quantized, config, calibration=[(x, torch.zeros(64, dtype=torch.long))])
        graphs[name] = int8_onnx_of(quantized)
    return graphs


def _annotated(data: bytes) -> bytes:
    import onnx

    return onnx.shape_inference.infer_shapes(onnx.load_from_string(data)).SerializeToString()


def _bare(data: bytes) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    proto.graph.ClearField("value_info")
    return proto.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from torchslim.evaluate import latency_ms
    from torchslim.export.runtime import OrtSession

    print(f"{args.threads} thread(s), {args.rounds} rounds; ms per batch, bare / annotated (ratio, its range)")
    print(f"{'model':>12} {'graph':>8} | {'batch 64':>32} | {'batch 1':>32}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = zoo_models.FACTORIES[name]().eval()
        for graph, data in _graphs(model).items():
            bare = _bare(data)
            sessions = {"bare": OrtSession(bare, args.threads), "annotated": OrtSession(_annotated(bare), args.threads)}
            cells = []
            for batch in (64, 1):
                times = {k: [] for k in sessions}
                for r in range(args.rounds):
                    for k in (("bare", "annotated") if r % 2 == 0 else ("annotated", "bare")):
                        times[k].append(latency_ms(sessions[k], INPUT_SHAPE, batch, runs=20, warmup=5 if r < 2 else 0))
                ratios = sorted(b / a for b, a in zip(times["bare"], times["annotated"]))
                cells.append(f"{statistics.median(times['bare']):7.3f} / {statistics.median(times['annotated']):7.3f}"
                             f" ({statistics.median(ratios):.2f}, {ratios[0]:.2f}-{ratios[-1]:.2f})")
            print(f"{name:>12} {graph:>8} | {cells[0]:>32} | {cells[1]:>32}", flush=True)
            x = torch.rand(64, *INPUT_SHAPE)
            assert torch.allclose(sessions["bare"](x), sessions["annotated"](x), atol=1e-5)


if __name__ == "__main__":
    main()
