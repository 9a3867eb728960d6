"""Multi-process training helpers for ``torchrun --nproc_per_node=N -m torchslim run ...``.

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``init_from_env()`` joins the process
group (nccl on GPU, gloo on CPU). Every helper is a no-op or trivial in a single process, so the training loop
calls them unconditionally. ``module_device`` says where a module's tensors live, for moving inputs to it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "init_from_env",
    "shutdown",
    "end_finished_worker",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "all_reduce_sum",
    "broadcast_",
    "broadcast_state_",
    "state_digest",
    "rank_digests",
    "shard_sampler",
    "local_device",
    "module_device",
]


def init_from_env() -> bool:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1 (once; later calls do nothing).

    Returns:
        True when running distributed after the call.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_device())  # nccl needs each rank on its own GPU before the first collective
            dist.init_process_group("nccl", device_id=local_device())
        else:
            dist.init_process_group("gloo")
    return is_distributed()


def shutdown() -> None:
    """Leave the process group together: every rank waits until rank 0 has written its files, then the group is
    destroyed, so no rank exits while another still talks to it."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def end_finished_worker() -> NoReturn:
    """End a rank other than 0 at once, after ``shutdown()`` of a run that finished: exit status 0, no teardown.

    Such a rank has written nothing and has nothing left to do, while the interpreter's exit still tears down the
    process group's threads: that once aborted a finished rank ("terminate called without an active exception",
    SIGABRT), and torchrun then failed a run whose outputs were complete.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the process that logs and writes files."""
    return rank() == 0


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when a GPU is present, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def module_device(module: nn.Module, default: torch.device | None = None) -> torch.device:
    """Where ``module`` lives: the device of its first parameter, else of its first buffer, else ``default``
    (cpu when None), so inputs can be moved to it."""
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    if tensor is not None:
        return tensor.device
    return default if default is not None else torch.device("cpu")


def _comm_device() -> torch.device:
    # nccl moves only CUDA tensors; gloo moves CPU tensors (and CUDA ones through the host).
    return local_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over ranks, on ``tensor``'s device; ``tensor`` itself is unchanged.

    Not distributed: returns ``tensor``.
    """
    if not is_distributed():
        return tensor
    buf = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank ``src``'s values; returns it. Not distributed: unchanged."""
    if not is_distributed():
        return tensor
    comm = _comm_device()
    if tensor.device == comm and tensor.is_contiguous():
        dist.broadcast(tensor, src=src)
    else:
        buf = tensor.detach().to(comm, copy=True).contiguous()
        dist.broadcast(buf, src=src)
        with torch.no_grad():
            tensor.copy_(buf)
    return tensor


def broadcast_state_(module: nn.Module, src: int = 0) -> nn.Module:
    """Make every parameter and buffer of ``module`` equal to rank ``src``'s (same init everywhere); returns it.

    All ranks must hold the same architecture (same names and shapes).
    """
    if is_distributed():
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                broadcast_(tensor.data, src=src)
    return module


def _digest(tensor: torch.Tensor) -> str:
    t = tensor.detach().cpu().contiguous().reshape(-1)
    raw = t.view(torch.uint8).numpy().tobytes()  # the exact bits, whatever the dtype (bool, bf16, ...)
    return hashlib.sha256(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode() + raw).hexdigest()


def state_digest(module: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of every parameter and buffer of ``module``, or of a ``{name: tensor}`` mapping such as pruning
    masks (names, shapes, dtypes and exact bits).

    Two modules with equal digests hold bit-identical state dicts, wherever they live (CPU or GPU).
    """
    state = module.state_dict() if isinstance(module, nn.Module) else module
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(f"{name}={_digest(tensor)};".encode())
    return h.hexdigest()


def rank_digests(module: nn.Module | Mapping[str, torch.Tensor]) -> list[str]:
    """Every rank's ``state_digest(module)``, in rank order; one entry when not distributed.

    Collective: every rank must call it. Equal entries mean the replicas agree bit for bit (e.g. after DDP
    training, where a divergence would be a bug). Every rank gets the whole list.
    """
    mine = state_digest(module)
    if not is_distributed():
        return [mine]
    digests: list[str | None] = [None] * world_size()
    dist.all_gather_object(digests, mine)
    return [str(d) for d in digests]


def shard_sampler(dataset: Dataset, shuffle: bool, seed: int = 0) -> DistributedSampler | None:
    """A sampler giving this rank its share of ``dataset``, or None when not distributed.

    Shards are disjoint when len(dataset) is a multiple of world_size(); otherwise a few indices repeat so
    every rank gets as many batches (DDP needs that). Call ``sampler.set_epoch(epoch)`` each epoch so the
    shuffle changes; pass ``shuffle=False`` to the DataLoader that uses it.
    """
    if not is_distributed():
        return None
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed)
