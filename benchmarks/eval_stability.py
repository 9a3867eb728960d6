"""How much `torchslim eval`'s batch-64 speed-up moves between consecutive runs of one artifact.

    PYTHONPATH=src python benchmarks/eval_stability.py [--repeats 3] [--threads 1,2] [--recipes A.yaml,B.yaml]

Runs each recipe once (default: the demo's Deep Compression of LeNet-300-100 and the static int8 LeNet-5, one
torch-only and one ONNX Runtime model), then for each thread count calls `torchslim eval ART --domain D --json
--threads N` --repeats times in a row, each a fresh process as a user would. Prints every run's
`latency_ratio_batch_64`, its interquartile range and `significant`, and the largest relative deviation of a run's
ratio from the median of the runs; the worst case over recipes and thread counts is the last line. A quiet machine
is assumed: the figure says how far a user's consecutive measurements agree, not how loaded the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = "recipes/digits/deep_compression.yaml,recipes/digits/quant_static_lenet5.yaml"


def _torchslim(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-m", "torchslim", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"torchslim {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--recipes", default=DEFAULT)
    args = parser.parse_args()
    from torchslim.recipe import load_recipe

    worst = (0.0, "")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            path = ROOT / recipe
            out = Path(tmp) / path.stem
            _torchslim("run", str(path), "--out", str(out), "--threads", "1", "--quiet")
            domain = load_recipe(path).domain.source
            inline = yaml.safe_load(path.read_text())["domain"]
            if isinstance(inline, dict):  # a domain written inside the recipe: eval needs it as a file
                domain = Path(tmp) / f"{path.stem}-domain.yaml"
                domain.write_text(yaml.safe_dump(inline))
            for threads in args.threads.split(","):
                ratios = []
                for i in range(args.repeats):
                    m = json.loads(_torchslim("eval", str(out / "artifact"), "--domain", str(domain), "--json",
                                              "--threads", threads, "--quiet").stdout)
                    spread = m["latency_spread"]["batch_64"]
                    ratios.append(m["latency_ratio_batch_64"])
                    print(f"{path.stem:24s} threads {threads}  run {i + 1}: ratio {ratios[-1]:.3f} "
                          f"(IQR {spread['ratio_iqr'][0]:.3f}-{spread['ratio_iqr'][1]:.3f}, "
                          f"significant {spread['significant']}), compressed {m['latency_ms']['batch_64']:.4f} ms, "
                          f"baseline {m['baseline_latency_ms']['batch_64']:.4f} ms")
                median = statistics.median(ratios)
                deviation = max(abs(r / median - 1) for r in ratios)
                print(f"{path.stem:24s} threads {threads}  ratios {min(ratios):.3f}-{max(ratios):.3f}, largest "
                      f"deviation from their median {100 * deviation:.1f} %")
                worst = max(worst, (deviation, f"{path.stem}, threads {threads}"))
    print(f"worst case: {100 * worst[0]:.1f} % ({worst[1]}) over {args.repeats} consecutive evals each")


if __name__ == "__main__":
    main()
