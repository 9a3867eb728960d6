import pytest
import torch
from torch.utils.data import TensorDataset

from torchslim.domain import Constraints
from torchslim.evaluate import check_constraints, compute_metric, count_params, latency_ms, size_bytes


def test_accuracy_and_top5_on_a_fixed_predictor():
    y = torch.tensor([0, 1, 2, 3])
    logits = torch.eye(10)[[0, 1, 5, 6]]  # right, right, wrong, wrong
    logits[2, 2] = 0.5  # the true class is second-best for sample 2
    logits[3, 3] = -1.0  # and last for sample 3
    data = TensorDataset(torch.arange(4), y)
    predict = lambda idx: logits[idx]  # noqa: E731
    assert compute_metric(predict, data, "accuracy") == 0.5
    assert compute_metric(predict, data, "top5") == 0.75



def test_tied_logits_go_to_the_lower_class_as_argmax_breaks_them():
    """Quantized logits tie: the metric must count what ``argmax`` on the same outputs predicts."""
    from torchslim.search.noise import correct_per_sample

    logits = torch.tensor([[0.0, 2.0, 2.0, 2.0, -1.0, 0.0, 0.0],   # tie of classes 1, 2, 3
                           [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],    # all tied
                           [0.0, 0.5, 3.0, 3.0, 0.5, 0.5, 0.5]])   # tie of 2 and 3
    y = torch.tensor([1, 0, 3])
    data = TensorDataset(torch.arange(3), y)
    predict = lambda idx: logits[idx]  # noqa: E731
    assert torch.equal(logits.argmax(1) == y, torch.tensor([True, True, False]))
    assert compute_metric(predict, data, "accuracy") == pytest.approx(2 / 3)
    assert correct_per_sample(predict, data, "accuracy").tolist() == [True, True, False]
    # top5 of the all-tied row: classes 0-4, so class 5 or 6 would miss
    assert compute_metric(predict, TensorDataset(torch.tensor([1, 1]), torch.tensor([4, 5])), "top5") == 0.5

def test_params_size_and_latency(tmp_path):
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight[0] = 0
    assert count_params(model) == (15, 11)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"1234")
    (tmp_path / "a" / "y.json").write_bytes(b"{}")
    assert size_bytes(tmp_path / "a") == 6 and size_bytes(tmp_path / "a" / "x.bin") == 4
    assert latency_ms(model, (4,), 64, runs=5) > 0


def test_constraints_report_each_limit():
    c = Constraints(max_size_bytes=1000, max_latency_ms={"batch_1": 0.5}, max_metric_drop=0.01)
    m = {"size_bytes": 900, "latency_ms": {"batch_1": 0.7, "batch_64": 2.0}, "value": 0.95, "baseline_value": 0.97}
    r = check_constraints(c, m)
    assert r["max_size_bytes"]["met"] and not r["max_latency_ms.batch_1"]["met"]
    assert not r["max_metric_drop"]["met"] and r["max_metric_drop"]["measured"] == pytest.approx(0.02)
    assert check_constraints(Constraints(min_metric=0.95), m)["min_metric"]["met"]


def test_ratio_constraints_compare_baseline_and_compressed():
    c = Constraints(min_speedup={"batch_1": 1.5, "batch_64": 4}, min_compression_ratio=10)
    m = {"latency_ms": {"batch_1": 0.5, "batch_64": 2.0}, "baseline_latency_ms": {"batch_1": 1.0, "batch_64": 6.0},
         "compression_ratio": 12.5}
    r = check_constraints(c, m)
    assert r["min_speedup.batch_1"] == {"limit": 1.5, "measured": 2.0, "met": True}
    assert r["min_speedup.batch_64"] == {"limit": 4, "measured": 3.0, "met": False}
    assert r["min_compression_ratio"] == {"limit": 10, "measured": 12.5, "met": True}
    # timed side by side, the speed-up is the median of the rounds' ratios, not the ratio of the medians
    m["latency_spread"] = {"batch_64": {"ratio": 4.2}}
    assert check_constraints(c, m)["min_speedup.batch_64"] == {"limit": 4, "measured": 4.2, "met": True}


def test_quantized_weights_count_by_their_logical_elements():
    from torchslim.quantize import quantize_
    from torchslim.quantize.config import KMeansConfig

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight[:, :4] = 0  # 32 pruned weights stay zero through the codebook
    quantize_(model, KMeansConfig(bits=2))
    params, nonzero = count_params(model)
    assert params == 16 * 8 + 8 + 8 * 4 + 4  # codes and codebooks are encodings, not extra parameters
    assert nonzero <= params - 32


def _mlp(width):
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))


class _Scratch(torch.nn.Module):
    """A layer that allocates a temporary of ``n`` floats inside forward: neither an input nor an output."""

    def __init__(self, n):
        super().__init__()
        self.fc, self.n = torch.nn.Linear(64, 10), n

    def forward(self, x):
        scratch = torch.ones(self.n)  # (n,)
        return self.fc(x) + scratch[:1]


def test_peak_memory_is_measured_while_the_model_runs(one_thread):
    from torchslim.evaluate import peak_memory_bytes

    # a temporary no module returns is seen: the allocator held it, so the peak holds it
    small, large = peak_memory_bytes(_Scratch(1), (64,)), peak_memory_bytes(_Scratch(1 << 20), (64,))
    assert large - small >= 4 * (1 << 20) - 64
    assert peak_memory_bytes(_Scratch(1 << 20), (64,)) == large  # the same model and batch: the same bytes


def test_peak_memory_grows_with_width_and_batch(one_thread):
    from torchslim.evaluate import peak_memory_bytes, resident_bytes

    def parts(width, batch):
        model = _mlp(width)
        held = resident_bytes(model)
        return held, peak_memory_bytes(model, (64,), batch) - held

    held, run = parts(256, 64)
    assert held == 4 * (64 * 256 + 256 + 256 * 10 + 10)  # fp32 weights and biases
    # while the ReLU runs, the input (64, 64), the Linear's output and the ReLU's output (64, 256) are all held
    assert run >= 4 * (64 * 64 + 2 * 64 * 256)
    wide_held, wide_run = parts(512, 64)
    assert wide_held > 1.9 * held and wide_run - run >= 4 * 2 * 64 * 256  # twice as wide: both parts grow
    _, double_batch = parts(256, 128)
    assert double_batch == pytest.approx(2 * run, rel=0.05)  # activations scale with the batch, weights do not


def test_peak_memory_counts_a_decoded_weight_kept_for_inference(one_thread):
    from torchslim.evaluate import peak_memory_bytes, resident_bytes
    from torchslim.quantize import quantize_
    from torchslim.quantize.config import KMeansConfig

    model = _mlp(256)
    quantize_(model, KMeansConfig(bits=4))
    codes_only = resident_bytes(model)
    assert codes_only < 4 * 64 * 256 / 2  # 4-bit codes, codebooks and fp32 biases
    peak = peak_memory_bytes(model, (64,))
    assert resident_bytes(model) >= codes_only + 4 * (64 * 256 + 256 * 10)  # the decoded fp32 weights
    assert peak > resident_bytes(model)


def test_side_by_side_latency_alternates_and_marks_what_noise_cannot_explain():
    import time as _time

    from torchslim.evaluate import side_by_side_latency

    def fast(x):
        return x

    def slow(x):
        _time.sleep(0.002)
        return x

    timed = side_by_side_latency(fast, slow, (1, 8, 8), rounds=5, runs=3, warmup=1)
    for batch in ("batch_1", "batch_64"):
        s = timed["latency_spread"][batch]
        assert timed["latency_ms"][batch] >= 2.0 > timed["baseline_latency_ms"][batch]
        assert s["ratio"] < 0.5 and s["ratio_iqr"][1] < 1.0 and s["significant"] is True
        assert s["baseline_iqr_ms"][0] <= timed["baseline_latency_ms"][batch] <= s["baseline_iqr_ms"][1]


def test_side_by_side_latency_splits_the_speed_up_between_runtime_and_compression():
    import time as _time

    from torchslim.evaluate import side_by_side_latency

    def sleeper(ms):
        return lambda x: _time.sleep(ms / 1e3)

    # torch baseline 24 ms, the baseline in the runtime 12 ms, the compressed model 4 ms: 2x from the runtime, 3x
    # from the compression, 6x in all (sleeps long enough that oversleeping on a loaded machine stays small);
    # every model takes every place in the rounds' order in turn
    timed = side_by_side_latency(sleeper(24), sleeper(4), (1, 8, 8), runtime_baseline=sleeper(12), rounds=6, runs=2,
                                 warmup=1)
    for batch in ("batch_1", "batch_64"):
        s = timed["latency_spread"][batch]
        assert 11.5 <= timed["runtime_baseline_latency_ms"][batch] < 16.0
        assert 1.6 < s["runtime_ratio"] < 2.2 and 2.3 < s["compression_ratio"] < 3.2 and 4.6 < s["ratio"] < 6.3
    assert "runtime_baseline_latency_ms" not in side_by_side_latency(sleeper(1), sleeper(1), (1, 8, 8), rounds=2,
                                                                      runs=1, warmup=0)


def test_a_busy_machine_is_seen_and_said():
    import subprocess
    import sys as _sys
    import time as _time

    from torchslim.evaluate import busy_timing, others_running

    spinner = subprocess.Popen([_sys.executable, "-c", "while True: pass"])
    try:
        _time.sleep(0.3)
        seen = [others_running() for _ in range(5)]
    finally:
        spinner.kill()
        spinner.wait()
    assert min(seen) >= 1  # the spinning process is running or waiting for a core at every look
    assert busy_timing({"others_running": 1, "threads": 2, "cores": 2}).startswith(
        "Timed on a busy machine: other processes kept 1 thread(s) running beside this one's 2 on 2 core(s)")
    assert "--threads 1." in busy_timing({"others_running": 1, "threads": 2, "cores": 2})
    assert busy_timing({"others_running": 1, "threads": 1, "cores": 2}) is None  # room for both
    assert busy_timing({"others_running": None, "threads": 2, "cores": 2}) is None  # not Linux: nothing known
    assert busy_timing({"threads": 2}) is None  # metrics written before the machine's load was recorded


def _timed_with(monkeypatch, fake_timing, measured, base):
    """The runner's side-by-side timing of a Linear with ``fake_timing`` in place of the real one, retries on."""
    import torchslim.evaluate as evaluate
    import torchslim.runner as runner

    monkeypatch.setattr(evaluate, "side_by_side_latency", fake_timing)
    monkeypatch.setattr(evaluate, "BUSY_WAIT_S", 0.0)
    monkeypatch.delenv(evaluate.RETRIES_ENV, raising=False)
    model = torch.nn.Linear(4, 2)
    return runner._side_by_side(model, {}, model, measured, base, (4,), "torch")


def test_timing_beside_other_work_is_taken_again_and_the_least_busy_kept(monkeypatch):
    import torchslim.evaluate as evaluate
    import torchslim.runner as runner

    busy = iter([2, 1, 1])  # other processes' running threads in each timing: busy, still busy, still busy
    calls = []

    def fake_timing(baseline, compressed, shape, runtime_baseline=None):
        calls.append(1)
        ms = {"batch_1": float(len(calls)), "batch_64": 1.0}
        return {"baseline_latency_ms": ms, "latency_ms": ms, "latency_spread": {}, "threads": 2, "cores": 2,
                "others_running": next(busy)}

    model, measured, base = torch.nn.Linear(4, 2), {}, {}
    timing = _timed_with(monkeypatch, fake_timing, measured, base)
    assert len(calls) == 1 + evaluate.BUSY_RETRIES and timing["others_running"] == 1
    assert measured["latency_ms"]["batch_1"] == 2.0  # the second timing: the first least busy one
    busy, calls[:] = iter([0]), []
    assert runner._side_by_side(model, {}, model, {}, {}, (4,), "torch")["others_running"] == 0 and len(calls) == 1
    # TORCHSLIM_TIMING_RETRIES: how often (0: never, as this suite sets it); a value that is no count is ignored
    monkeypatch.setenv(evaluate.RETRIES_ENV, "0")
    busy, calls[:] = iter([2]), []
    assert runner._side_by_side(model, {}, model, {}, {}, (4,), "torch")["others_running"] == 2 and len(calls) == 1
    monkeypatch.setenv(evaluate.RETRIES_ENV, "-1")
    assert evaluate.busy_retries() == evaluate.BUSY_RETRIES


def test_an_unsteady_timing_is_taken_again_and_the_steadiest_kept(monkeypatch):
    import torchslim.evaluate as evaluate
    import torchslim.runner as runner

    # the torch baseline's rounds at batch 64 within these quartiles in each timing: 7.4x apart (seen on a 2-core
    # virtual machine that lost a core to its host), 3.0x, then a steady 1.1x
    quartiles = iter([[3.5, 25.9], [2.0, 6.0], [2.0, 2.2]])
    calls = []

    def fake_timing(baseline, compressed, shape, runtime_baseline=None):
        calls.append(1)
        q = next(quartiles)
        spread = {"batch_1": {"baseline_iqr_ms": [0.20, 0.22], "compressed_iqr_ms": [0.10, 0.11]},
                  "batch_64": {"baseline_iqr_ms": q, "compressed_iqr_ms": [2.7, 3.0]}}
        ms = {"batch_1": 0.21, "batch_64": (q[0] + q[1]) / 2}
        return {"baseline_latency_ms": ms, "latency_ms": {"batch_1": 0.1, "batch_64": 2.8},
                "latency_spread": spread, "threads": 2, "cores": 2, "others_running": 0}

    model, measured, base = torch.nn.Linear(4, 2), {}, {}
    timing = _timed_with(monkeypatch, fake_timing, measured, base)
    assert len(calls) == 3 and base["latency_ms"]["batch_64"] == 2.1  # the steady third timing is kept
    assert evaluate.unsteady_timing(timing) is None and evaluate.timing_caveat(timing) is None
    # a timing left unsteady says so, naming the model, the batch and its rounds' quartiles
    monkeypatch.setenv(evaluate.RETRIES_ENV, "0")
    quartiles, calls[:] = iter([[3.5, 25.9]]), []
    timing = runner._side_by_side(model, {}, model, {}, {}, (4,), "torch")
    assert len(calls) == 1
    assert evaluate.timing_caveat(timing) == evaluate.unsteady_timing(timing) == (
        "Timed unsteadily: the baseline model's rounds at batch 64 took 3.5-25.9 ms (interquartile), 7.4x apart: "
        "the latencies and speed-ups may be far off; time again (torchslim eval) when the machine is quiet.")
    # 2.5x apart is within what a quiet 2-core machine shows at batch 1 (up to 1.9x in 292 timings)
    assert evaluate.unsteady_timing({"latency_spread": {"batch_1": {"baseline_iqr_ms": [0.1, 0.19]}}}) is None


def test_a_slowdown_within_noise_is_not_reported_as_one():
    from torchslim.report import slowdown_reason

    m = {"baseline_latency_ms": {"batch_1": 0.10, "batch_64": 1.0}, "latency_ms": {"batch_1": 0.11, "batch_64": 0.9},
         "runtime": "torch", "params": 100, "baseline_params": 100, "stages": [],
         "latency_spread": {"batch_1": {"significant": False}, "batch_64": {"significant": True}}}
    assert slowdown_reason(m) is None
    m["latency_spread"]["batch_1"]["significant"] = True
    assert slowdown_reason(m).startswith("Slower than the baseline at batch 1")
    # the medians say slower, the rounds' paired ratio (the speed-up the summary shows) says faster: not slower
    m["latency_spread"]["batch_1"]["ratio"] = 1.0022
    assert slowdown_reason(m) is None


def test_measure_without_latency_times_nothing(monkeypatch):
    import torchslim.evaluate as evaluate

    def no_timing(*_args, **_kwargs):
        raise AssertionError("latency timed")

    monkeypatch.setattr(evaluate, "latency_ms", no_timing)
    model = torch.nn.Linear(4, 3)
    data = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
    out = evaluate.measure(model, data, "accuracy", (4,), latency=False)
    assert "latency_ms" not in out and out["params"] == 15
    with pytest.raises(AssertionError, match="latency timed"):
        evaluate.measure(model, data, "accuracy", (4,))


def test_a_run_times_latency_once_side_by_side(tmp_path, monkeypatch):
    """``torchslim run`` and ``eval`` time both models only in the side-by-side rounds, and metrics.json still
    has both latencies."""
    import json

    from click.testing import CliRunner

    import torchslim.evaluate as evaluate
    from cli_support import DIGITS_DOMAIN
    from torchslim.cli import cli

    def no_timing(*_args, **_kwargs):
        raise AssertionError("latency timed outside the side-by-side rounds")

    monkeypatch.setattr(evaluate, "latency_ms", no_timing)
    (tmp_path / "domain.yaml").write_text(DIGITS_DOMAIN)
    (tmp_path / "recipe.yaml").write_text("domain: domain.yaml\nseed: 0\nstages:\n  - train: {epochs: 1, lr: 0.003, batch_size: 64}\n")
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics["latency_ms"]) == set(metrics["baseline_latency_ms"]) == {"batch_1", "batch_64"}
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "out" / "artifact"), "--domain",
                                      str(tmp_path / "domain.yaml"), "--json"])
    assert result.exit_code == 0, result.output
