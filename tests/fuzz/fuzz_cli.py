"""Feed generated bad input to the CLI in-process and classify every outcome.

    python tests/fuzz/fuzz_cli.py --cases 5000     # what `make fuzz` runs; exit 1 when any case failed

A case is ok when the command succeeds (some generated inputs are valid) or exits with code 2 and prints exactly
one line on stderr, ``error: ...``, at most 300 characters, naming one of the case's files, without writing
anything. Anything else is a failure: a traceback (or the CLI's last-resort guard), another exit code, several
lines, a line too long or naming no file, files written, or more than ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from strategies import Case, Dir, Fifo, Link, Unreadable, dump, STAGE_CONFIGS, TINY_DOMAIN, tiny_recipe  # noqa: E402

MAX_LINE = 300
FAILURES = ("traceback", "exit-code", "multi-line", "not-error-line", "too-long", "no-file-named", "wrote",
            "hang")
# The CLI's last-resort guard (an exception nobody turned into a ConfigError) counts as a traceback; the cases run
# with TORCHSLIM_TRACEBACK=1, so the guard re-raises and the report says where the exception came from.
GUARD_MARK = "please report"
ENV = {"TQDM_DISABLE": "1", "TORCHSLIM_TRACEBACK": "1"}


@contextlib.contextmanager
def _chdir(path: Path):
    """``contextlib.chdir`` (Python 3.11) for 3.10 as well."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class _Timeout(BaseException):
    """Raised by SIGALRM inside the command; BaseException so that ``except Exception`` does not swallow it."""


@dataclass
class Outcome:
    case: Case
    result: str  # "ok" or one of FAILURES
    detail: str = ""
    seconds: float = 0.0


def _create(folder: Path, files: dict[str, Any]) -> None:
    for rel, entry in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(entry, bytes):
            path.write_bytes(entry)
        elif isinstance(entry, Dir):
            path.mkdir(exist_ok=True)
        elif isinstance(entry, Fifo):
            os.mkfifo(path)
        elif isinstance(entry, Link):
            os.symlink(entry.target, path)
        elif isinstance(entry, Unreadable):
            path.write_bytes(entry.data)
            path.chmod(0)


def _snapshot(folder: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), folder))
    return out


def _remove(folder: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, stat.S_IRWXU)
    shutil.rmtree(folder, ignore_errors=True)


def _where(exc: BaseException) -> str:
    """Where an exception was raised: the innermost torchslim frame (else the innermost frame), and its type."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "torchslim" in f.filename and "/tests/" not in f.filename]
    f = (ours or frames or [None])[-1]
    where = f"{Path(f.filename).name}:{f.lineno} {f.name}" if f is not None else "?"
    return f"{type(exc).__name__} at {where}: {str(exc).splitlines()[0][:150] if str(exc) else ''}"


class Fuzzer:
    """Runs cases in fresh folders under one session folder; ``eval`` cases share one saved artifact."""

    def __init__(self, timeout: float = 60.0):
        from click.testing import CliRunner

        from torchslim.cli import cli

        self.cli, self.runner, self.timeout = cli, CliRunner(), timeout
        self.root = Path(tempfile.mkdtemp(prefix="torchslim-fuzz-"))
        self._artifact: str | None = None
        self.outcomes: list[Outcome] = []

    def close(self) -> None:
        _remove(self.root)

    def artifact(self) -> str:
        """A small saved artifact (one epoch of a tiny model on digits), made on first use."""
        if self._artifact is None:
            folder = self.root / "artifact-run"
            _create(folder, {"recipe.yaml": dump(tiny_recipe(STAGE_CONFIGS["train"])),
                             "domain.yaml": dump(TINY_DOMAIN)})
            with _chdir(folder):
                result = self.runner.invoke(self.cli, ["run", "recipe.yaml", "--out", "out"],
                                            env={"TQDM_DISABLE": "1"})
            assert result.exit_code == 0, result.output
            self._artifact = str(folder / "out" / "artifact")
        return self._artifact

    def execute(self, case: Case) -> Outcome:
        folder = Path(tempfile.mkdtemp(dir=self.root))
        args = [self.artifact() if a == "ARTIFACT" else a for a in case.args]
        _create(folder, case.files)
        before = _snapshot(folder)
        saved_path, saved_modules = list(sys.path), set(sys.modules)
        previous = signal.signal(signal.SIGALRM, self._alarm)
        start = time.perf_counter()
        timed_out = False
        try:
            with _chdir(folder), warnings.catch_warnings():
                warnings.simplefilter("always")  # shown every time, as in a fresh process
                warnings.simplefilter("ignore", ResourceWarning)  # as Python's default filters do
                signal.setitimer(signal.ITIMER_REAL, self.timeout)
                try:
                    result = self.runner.invoke(self.cli, args, env=ENV)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:
            timed_out, result = True, None
        finally:
            signal.signal(signal.SIGALRM, previous)
            sys.path[:] = saved_path
            for name in set(sys.modules) - saved_modules:  # user factory modules of this case
                if name.startswith("fac_"):
                    del sys.modules[name]
        seconds = time.perf_counter() - start
        after = _snapshot(folder)
        _remove(folder)
        outcome = self._classify(case, result, timed_out, after - before)
        outcome.seconds = seconds
        self.outcomes.append(outcome)
        return outcome

    def _alarm(self, signum: int, frame: Any) -> None:
        raise _Timeout()

    def _classify(self, case: Case, result: Any, timed_out: bool, written: set[str]) -> Outcome:
        if timed_out:
            return Outcome(case, "hang", f"over {self.timeout:.0f} s")
        exc = result.exception
        if exc is not None and not isinstance(exc, SystemExit):
            return Outcome(case, "traceback", _where(exc))
        stderr = result.stderr
        if result.exit_code == 0:
            if case.command == "check" and written:
                return Outcome(case, "wrote", f"check wrote {sorted(written)[:3]}")
            return Outcome(case, "ok", "valid")
        lines = [line for line in stderr.splitlines() if line.strip()]
        if GUARD_MARK in stderr:
            return Outcome(case, "traceback", stderr.strip()[:300])
        if result.exit_code != 2:
            return Outcome(case, "exit-code", f"exit {result.exit_code}: {stderr[-300:]!r}")
        if len(lines) != 1:
            return Outcome(case, "multi-line", stderr[-400:])
        line = lines[0]
        if not line.startswith("error: "):
            return Outcome(case, "not-error-line", line[:300])
        if len(line) > MAX_LINE:
            return Outcome(case, "too-long", f"{len(line)} chars: {line[:200]}...")
        if not any(name in line for name in case.names):
            return Outcome(case, "no-file-named", line)
        if written:
            return Outcome(case, "wrote", f"{sorted(written)[:3]} after {line}")
        return Outcome(case, "ok", line)

    # --- the report --------------------------------------------------------------------------------------------

    def counts(self) -> collections.Counter:
        return collections.Counter(o.result for o in self.outcomes)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result != "ok"]

    def report(self, examples: int = 3) -> str:
        counts = self.counts()
        lines = [f"cases {len(self.outcomes)}, ok {counts['ok']}, tracebacks {counts['traceback']}, "
                 f"multi-line errors {counts['multi-line']}, hangs {counts['hang']}, other failures "
                 f"{sum(counts[f] for f in FAILURES if f not in ('traceback', 'multi-line', 'hang'))} "
                 f"({', '.join(f'{f} {counts[f]}' for f in FAILURES if counts[f] and f not in ('traceback', 'multi-line', 'hang')) or 'none'})",
                 f"slowest case {max((o.seconds for o in self.outcomes), default=0):.1f} s", "", "by input class:"]
        by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for o in self.outcomes:
            by_kind[o.case.kind][o.result] += 1
            by_kind[o.case.kind]["valid" if o.detail == "valid" else "rejected" if o.result == "ok" else "failed"] += 1
        for kind in sorted(by_kind):
            c = by_kind[kind]
            bad = ", ".join(f"{f} {c[f]}" for f in FAILURES if c[f])
            lines.append(f"  {kind:28s} {sum(c[r] for r in ('ok', *FAILURES)):5d} cases: ok {c['ok']} "
                         f"(rejected {c['rejected']}, valid {c['valid']})" + (f"; FAILED {bad}" if bad else ""))
        places = collections.Counter(o.detail.split(": ")[0] for o in self.outcomes if o.result == "traceback")
        if places:
            lines += ["", f"distinct traceback places: {len(places)}"]
            lines += [f"  {n:4d}  {place}" for place, n in places.most_common()]
        shown: collections.Counter = collections.Counter()
        first = True
        for o in self.failures():
            key = (o.result, o.detail.split(": ")[0] if o.result == "traceback" else o.case.kind)
            if shown[key] >= examples:
                continue
            shown[key] += 1
            if first:
                lines += ["", "examples of failures:"]
                first = False
            lines += [f"- {o.result}: {o.detail}", "  " + o.case.describe().replace("\n", "\n  ")[:1500]]
        return "\n".join(lines)


def fuzz(n: int, *, timeout: float = 60.0, progress: bool = False) -> Fuzzer:
    """Run ``n`` generated cases (the same ones every time) and return the fuzzer holding their outcomes."""
    from hypothesis import HealthCheck, Phase, given, settings

    from strategies import cases

    fuzzer = Fuzzer(timeout)
    start = time.perf_counter()

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(cases())
    def one(case: Case) -> None:
        fuzzer.execute(case)
        if progress and len(fuzzer.outcomes) % 250 == 0:
            c = fuzzer.counts()
            print(f"{len(fuzzer.outcomes)} cases, {len(fuzzer.outcomes) - c['ok']} failed, "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    try:
        one()
    except BaseException:
        fuzzer.close()
        raise
    return fuzzer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds after which a case counts as a hang")
    parser.add_argument("--examples", type=int, default=3, help="failures shown per kind")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    fuzzer = fuzz(args.cases, timeout=args.timeout, progress=True)
    try:
        print(fuzzer.report(args.examples))
        return 1 if fuzzer.failures() else 0
    finally:
        fuzzer.close()


if __name__ == "__main__":
    sys.exit(main())
