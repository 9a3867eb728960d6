"""torchslim.distributed: trivial in one process; correct in a real 2-process gloo run launched by torchrun.

Run as a script under torchrun, this file is the worker: ``python -m torch.distributed.run --nproc_per_node=2
tests/test_distributed.py OUT.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim import distributed as D

from torchrun_support import run_torchrun


def test_single_process_helpers_are_trivial():
    assert D.init_from_env() is False
    assert (D.is_distributed(), D.rank(), D.world_size(), D.is_main()) == (False, 0, 1, True)
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t) is t
    assert D.broadcast_(t) is t and torch.equal(t, torch.tensor([1.0, 2.0]))
    model = nn.Linear(2, 2)
    before = [p.detach().clone() for p in model.parameters()]
    assert D.broadcast_state_(model) is model
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert D.shard_sampler(TensorDataset(torch.arange(10)), shuffle=True, seed=0) is None
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert D.local_device() == expected
    assert D.module_device(model) == torch.device("cpu")
    assert D.module_device(nn.ReLU()) == torch.device("cpu")
    assert D.module_device(nn.ReLU(), torch.device("meta")) == torch.device("meta")  # nothing to go by
    assert D.module_device(nn.BatchNorm1d(3, affine=False).to("meta")) == torch.device("meta")  # buffers only


def test_digest_tells_bits_shape_and_dtype_apart():
    digest = D._digest
    mask = torch.tensor([True, False, True])
    assert digest(mask) == digest(mask.clone())
    assert digest(mask) != digest(torch.tensor([True, True, True]))
    assert digest(torch.zeros(2, 3)) != digest(torch.zeros(3, 2))
    assert digest(torch.zeros(4)) != digest(torch.zeros(4, dtype=torch.float64))
    assert digest(torch.tensor(1.0, dtype=torch.bfloat16)) == digest(torch.tensor(1.0, dtype=torch.bfloat16))


def test_state_digest_covers_names_and_bits_of_the_state_dict():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    b = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    b.load_state_dict(a.state_dict())
    assert D.state_digest(a) == D.state_digest(b) and len(D.state_digest(a)) == 64
    assert D.rank_digests(a) == [D.state_digest(a)]
    with torch.no_grad():
        b[0].weight.view(-1)[5] = torch.nextafter(b[0].weight.view(-1)[5], torch.tensor(1.0))  # one ulp
    assert D.state_digest(a) != D.state_digest(b)
    b.load_state_dict(a.state_dict())
    b[1].running_mean.add_(1e-7)  # buffers count too
    assert D.state_digest(a) != D.state_digest(b)


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_two_process_gloo_run(tmp_path):
    out = tmp_path / "result.json"
    proc = run_torchrun(__file__, out, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())

    assert r["initialised"] == [True, True]
    assert r["ranks"] == [0, 1] and r["world_sizes"] == [2, 2]
    assert r["sum"] == [1.0 + 2.0, 10.0 + 20.0]  # rank r contributes [r+1, 10(r+1)]
    assert r["sum_int"] == [4, 6]  # [1, 2] + [3, 4], dtype kept
    assert r["broadcast"] == [0.0, 0.0, 0.0]  # rank 0's values on rank 1
    assert len(r["digests_before"]) == 2 and r["digests_before"][0] != r["digests_before"][1]
    assert r["digests_after"][0] == r["digests_after"][1] == r["digests_before"][0]  # rank 0's state everywhere
    # Shards of a 10-item dataset: disjoint, 5 each, covering it; 11 items: 6 each, covering it.
    a, b = r["shards_10"]
    assert len(a) == len(b) == 5 and not set(a) & set(b) and sorted(a + b) == list(range(10))
    a, b = r["shards_11"]
    assert len(a) == len(b) == 6 and set(a) | set(b) == set(range(11))
    # DDP: weights identical on both ranks after 2 steps, equal to one process training on both shards at once.
    assert r["ddp_same_on_all_ranks"] is True
    assert r["ddp_changed"] is True
    assert r["ddp_max_diff_vs_single_process"] < 1e-6
    # Distillation under DDP: StudentWithExtras puts the feature projection inside the DDP module, so it stays
    # equal on both ranks; a projection left outside the DDP module drifts apart.
    kd = r["kd_ddp"]
    assert kd["n_extra"] == 2  # Linear(3 -> 16): weight and bias
    assert kd["student_same_with_extras"] and kd["projection_same_with_extras"]
    assert kd["projection_changed_with_extras"]
    assert kd["student_same_student_only"] and not kd["projection_same_student_only"]


def _worker(out_path: str) -> None:
    assert D.init_from_env()
    me, n = D.rank(), D.world_size()
    r: dict = {}

    def gather(value):
        # Every rank's value, in rank order (objects travel through torch.distributed).
        values = [None] * n
        torch.distributed.all_gather_object(values, value)
        return values

    def same(tensors) -> bool:
        # Bit-identical on every rank.
        digests = gather([D._digest(t) for t in tensors])
        return all(d == digests[0] for d in digests)

    r["initialised"] = gather(D.is_distributed())
    r["ranks"], r["world_sizes"] = gather(me), gather(n)
    r["sum"] = D.all_reduce_sum(torch.tensor([me + 1.0, 10.0 * (me + 1)])).tolist()
    r["sum_int"] = D.all_reduce_sum(torch.tensor([2 * me + 1, 2 * me + 2])).tolist()
    r["broadcast"] = gather(D.broadcast_(torch.full((3,), float(me))).tolist())[1]

    torch.manual_seed(100 + me)  # a different init on each rank
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[1].running_mean.fill_(float(me))
    r["digests_before"] = D.rank_digests(model)
    D.broadcast_state_(model)
    r["digests_after"] = D.rank_digests(model)

    for size in (10, 11):
        sampler = D.shard_sampler(TensorDataset(torch.arange(size)), shuffle=True, seed=3)
        sampler.set_epoch(1)
        r[f"shards_{size}"] = gather(list(sampler))

    # DDP on a tiny model: each rank trains on its own shard; gradients are averaged across ranks.
    torch.manual_seed(0)
    x_all, y_all = torch.randn(8, 4), torch.randn(8, 2)
    torch.manual_seed(1 + me)
    net = nn.Linear(4, 2)
    D.broadcast_state_(net)
    init = [p.detach().clone() for p in net.parameters()]
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    shard = torch.arange(me, 8, n)  # rank 0: even rows, rank 1: odd rows
    for _ in range(2):
        opt.zero_grad()
        nn.functional.mse_loss(ddp(x_all[shard]), y_all[shard]).backward()
        opt.step()
    r["ddp_same_on_all_ranks"] = same(net.parameters())
    r["ddp_changed"] = any(not torch.equal(a, b) for a, b in zip(init, net.parameters()))
    # Reference: one process, same init, the whole batch (equal shards: mean of shard means = full mean).
    ref = nn.Linear(4, 2)
    with torch.no_grad():
        for p, q in zip(ref.parameters(), init):
            p.copy_(q)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        ref_opt.zero_grad()
        nn.functional.mse_loss(ref(x_all), y_all).backward()
        ref_opt.step()
    diffs = [(a - b).abs().max().item() for a, b in zip(ref.parameters(), net.parameters())]
    r["ddp_max_diff_vs_single_process"] = max(diffs)

    r["kd_ddp"] = _distill_under_ddp(x_all, me, n, same)

    if D.is_main():
        Path(out_path).write_text(json.dumps(r))
    torch.distributed.barrier()


def _distill_under_ddp(x_all, me, n, same) -> dict:
    # A distillation loss with a feature projection (trained with the student). Wrapped together with the student
    # in StudentWithExtras, DDP synchronises the projection's gradients too; wrapping the student alone leaves the
    # projection to each rank's own shard, and the replicas drift apart.
    from torchslim.distill import FeatureMatch, KDConfig, StudentWithExtras, make_loss_fn

    out = {}
    y_all = torch.arange(8) % 2
    for how in ("with_extras", "student_only"):
        torch.manual_seed(0)
        teacher = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        torch.manual_seed(1 + me)
        student = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        loss_fn = make_loss_fn(student, teacher, KDConfig(features=(FeatureMatch("0", "0"),)), (x_all, y_all))
        extra = loss_fn.extra_parameters()
        trained = StudentWithExtras(student, extra) if how == "with_extras" else student
        D.broadcast_state_(trained)
        D.broadcast_state_(loss_fn.objective)  # the projection starts equal everywhere
        start = [p.detach().clone() for p in extra]
        ddp = nn.parallel.DistributedDataParallel(trained)
        opt = torch.optim.SGD([*ddp.parameters(), *([] if how == "with_extras" else extra)], lr=0.5)
        shard = torch.arange(me, 8, n)
        for _ in range(2):
            opt.zero_grad()
            loss_fn(ddp, (x_all[shard], y_all[shard])).backward()
            opt.step()
        out[f"student_same_{how}"] = same(student.parameters())
        out[f"projection_same_{how}"] = same(extra)
        out[f"projection_changed_{how}"] = any(not torch.equal(a, b) for a, b in zip(start, extra))
        out["n_extra"] = len(extra)
        loss_fn.close()
    return out


if __name__ == "__main__":
    _worker(sys.argv[1])
    # Skip interpreter teardown: gloo's worker threads can abort it (SIGABRT) after the results are written.
    sys.stdout.flush()
    os._exit(0)
