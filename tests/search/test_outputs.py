"""What ``torchslim auto`` prints of its candidates: the Pareto front of the feasible ones."""

from __future__ import annotations

from torchslim.search.outputs import front_lines


def _record(number, size, val, speedup, feasible=True):
    return {"number": number, "size_bytes": size, "val_value": val, "value": val - 0.01, "speedup_batch_64": speedup,
            "violations": {"max_metric_drop": 0.0 if feasible else 0.5}, "metric": "accuracy",
            "brief": f"candidate {number}"}


RECORDS = [_record(0, 900, 0.96, 2.0), _record(1, 700, 0.95, 3.0), _record(2, 500, 0.93, 1.5),
           _record(3, 800, 0.94, 2.5),  # beaten on both by 1 (smaller, better)
           _record(4, 300, 0.97, 9.0, feasible=False),  # would beat them all, but is not feasible
           _record(5, 700, 0.95, 1.0)]  # the same bytes and metric as 1: on the front too


def _trials(lines):
    return [int(line.split()[0]) for line in lines[2:] if line.split()[0].isdigit()]


def test_the_front_is_the_feasible_candidates_none_beats_on_both_axes():
    best = RECORDS[1]
    lines = front_lines(RECORDS, best, "size")
    assert lines[0].startswith("Pareto front: 4 feasible candidates that no other beats on both bytes and "
                               "validation accuracy")
    assert _trials(lines) == [2, 1, 5, 0]  # by bytes: 500, 700, 700, 900
    (marked,) = [line for line in lines if line.endswith("<- best")]
    assert marked.split()[:2] == ["1", "700"] and "95.00 %" in marked and "94.00 %" in marked  # val, then test
    # latency: speed-up is the axis (higher is better): 1 (3.0x) beats 3, 0 and 2 on speed, only 0 has more metric
    assert _trials(front_lines(RECORDS, best, "latency")) == [1, 0]
    assert front_lines([RECORDS[4]], RECORDS[4], "size") == []  # none feasible: the closest is said elsewhere


def test_a_best_off_the_front_is_said_and_a_long_front_is_cut():
    short = [{**r, "margin_violations": {"max_metric_drop": 0.2}} if r["number"] == 2 else r for r in RECORDS]
    lines = front_lines(short, RECORDS[3], "size")  # a best the front leaves out; 2 is feasible, not by its margin
    assert lines[-1].startswith("  best, trial 3, is not on it")
    assert lines[2].startswith("      2") and lines[2].endswith("candidate 2 (feasible, not by the margin)")
    many = [_record(n, 100 + n, 0.5 + n / 100, 1.0) for n in range(12)]  # each larger and better: all on it
    lines = front_lines(many, many[0], "size", most=10)
    assert len(_trials(lines)) == 10 and lines[-1] == "  ... and 2 more in trials.csv"
