"""The README's "Your own model and data" walk-through, run as written: its files, then its commands."""

import json
import re
import subprocess
import sys

from cli_support import ROOT, cli_env


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Your own model and data")
    return text[start:text.index("\n## ", start + 10)]


def test_the_own_model_walk_through_runs_as_written(tmp_path):
    blocks = re.findall(r"```(\w+)\n(.*?)```", _section(), re.S)
    commands = []
    for lang, body in blocks:
        if lang == "bash":
            commands += [line for line in body.splitlines() if line.strip()]
            continue
        name = body.splitlines()[0].removeprefix("# ").split(":")[0].strip()
        (tmp_path / name).write_text(body)
    assert {p.name for p in tmp_path.iterdir()} >= {"make_data.py", "mymodels.py", "train_mine.py", "domain.yaml",
                                                    "recipe.yaml", "use.py"}
    outputs = []
    for line in commands:
        program, *args = line.split()
        argv = [sys.executable, *args] if program == "python" else [sys.executable, "-m", "torchslim", *args]
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=cli_env(), timeout=600)
        assert proc.returncode == 0, (line, proc.stderr)
        outputs.append(proc.stdout)
    metrics = json.loads((tmp_path / "runs" / "mine" / "metrics.json").read_text())
    assert metrics["baseline_value"] > 0.93  # the user's own trained weights, measured on x_test
    assert metrics["compression_ratio"] > 5 and metrics["nonzero_params"] < 0.4 * metrics["params"]
    assert metrics["data"]["test"] == 114  # the npz's own test part
    assert f"{100 * metrics['value']:.2f} %" in outputs[3]  # eval re-measures what run reported
    predictions = json.loads(outputs[4])
    assert len(predictions) == 8 and set(predictions) <= {0, 1}
