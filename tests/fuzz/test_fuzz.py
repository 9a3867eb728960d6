"""The fast slice of the CLI fuzzer: the same 150 generated bad inputs every time, none may end in a traceback.

``make fuzz`` runs 5,000 (see ``fuzz_cli.py``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_cli import fuzz  # noqa: E402


def test_generated_bad_input_gets_one_line_and_exit_code_2(one_thread):
    fuzzer = fuzz(150)
    try:
        report = fuzzer.report(examples=2)
        assert not fuzzer.failures(), report
        counts = fuzzer.counts()
        assert counts["ok"] == len(fuzzer.outcomes) >= 140
        kinds = {o.case.kind.split("-")[0] for o in fuzzer.outcomes}
        assert {"stage", "npz", "imagefolder", "factory", "special", "run", "eval"} <= kinds, kinds
    finally:
        fuzzer.close()
