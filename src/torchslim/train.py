"""The one training loop. Training, fine-tuning after pruning, QAT and distillation all run through ``fit``.

Seeded and deterministic (the data order of epoch e depends only on the seed and e), with a progress bar, the
validation-best checkpoint, and a checkpoint every epoch so an interrupted run resumes to the same weights.
Under ``torchrun`` the data are sharded with a DistributedSampler, gradients are averaged by DDP and only rank 0
writes files; ``batch_size`` is per rank.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchslim import distributed as dist
from torchslim._errors import ConfigError
from torchslim.evaluate import compute_metric

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, x, y) -> scalar
AUGMENTATIONS = ("none", "shift", "mixup", "shift+mixup")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one run of the loop."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "cosine"  # cosine | constant
    # none | shift (random translation by up to one step per sample) | mixup (see ``mixup``) | shift+mixup
    augment: str = "none"

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ConfigError("augment", f"must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")


def random_shift(x: torch.Tensor, max_shift: int = 1) -> torch.Tensor:
    """Translate each sample by a random offset in [-max_shift, max_shift] along every spatial axis, zero-filled.

    Args:
        x: (N, C, *spatial) with one or two spatial axes.
    """
    n, spatial = x.shape[0], x.shape[2:]
    padded = nn.functional.pad(x, (max_shift, max_shift) * len(spatial))  # (N, C, *(s + 2m))
    offsets = torch.randint(0, 2 * max_shift + 1, (n, len(spatial)))
    out = torch.empty_like(x)
    for combo in offsets.unique(dim=0):
        rows = (offsets == combo).all(dim=1).nonzero().squeeze(1)
        window = tuple(slice(int(o), int(o) + size) for o, size in zip(combo, spatial))
        out[rows] = padded[(rows, slice(None), *window)]
    return out


# Beta(a, a) for mixup's weight. 0.2 keeps most pairs close to one of the two samples; on MNIST-1D a uniform
# weight (1.0) cost the small CNN several points of validation accuracy.
MIXUP_ALPHA = 0.2


def mixup(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float = MIXUP_ALPHA
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each sample with another of the same batch, and its label with the same weight (Zhang et al. 2018).

    One weight lam ~ Beta(alpha, alpha) per batch; the partner of sample i is sample perm[i] of a random
    permutation. Both are drawn from torch's global generator, so a seeded run repeats. Cross-entropy accepts
    the mixed labels as class probabilities; a distillation teacher is run on the mixed inputs.

    Args:
        x: inputs (N, ...).
        y: integer labels (N,) or class probabilities (N, K).
        num_classes: K, the width of the one-hot labels.
    Returns:
        ``lam * x + (1 - lam) * x[perm]`` (N, ...) and the labels mixed alike, as probabilities (N, K).
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0]).to(x.device)  # drawn on the CPU: the same pairs on any device
    probs = y.to(x.dtype) if y.is_floating_point() else nn.functional.one_hot(y, num_classes).to(x.dtype)  # (N, K)
    return lam * x + (1.0 - lam) * x[perm], lam * probs + (1.0 - lam) * probs[perm]


@torch.no_grad()
def _output_width(model: nn.Module, x: torch.Tensor) -> int:
    """K, the number of classes the model scores: one sample through it, in eval mode (no statistics move)."""
    was_training = model.training
    model.eval()
    try:
        return int(model(x[:1]).shape[-1])  # (1, K)
    finally:
        model.train(was_training)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of an epoch: cosine decay from ``lr`` towards 0, or constant. A pure function of the epoch,
    so a resumed run follows the same schedule."""
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


@dataclass
class FitResult:
    best_epoch: int
    best_val: float
    history: list[dict[str, float]] = field(default_factory=list)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def _make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _epoch_loader(data: Dataset, batch_size: int, seed: int, epoch: int) -> DataLoader:
    sampler = dist.shard_sampler(data, shuffle=True, seed=seed)
    if sampler is not None:  # under torchrun: each rank takes its own shard, reshuffled per epoch
        sampler.set_epoch(epoch)
        return DataLoader(data, batch_size=batch_size, sampler=sampler)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)


def fit(model: nn.Module, train: Dataset, val: Dataset, cfg: TrainConfig, *, seed: int = 0,
        loss_fn: Optional[LossFn] = None,
        after_step: Optional[Callable[[], None]] = None, metric: str = "accuracy",
        checkpoint: Optional[str | Path] = None, resume: bool = False, desc: str = "train",
        device: Optional[torch.device] = None) -> FitResult:
    """Train ``model`` in place and leave it at its best validation epoch.

    Args:
        model: the model to train (moved to ``device``).
        train: training split; val: validation split (chooses the best epoch).
        cfg: epochs, learning rate, batch size (per rank), weight decay, optimizer.
        seed: fixes the data order of every epoch.
        loss_fn: ``(model, x, y) -> loss``; cross-entropy by default (distillation passes its own).
        after_step: called after every optimizer step (pruning masks, k-means centroid sharing).
        metric: validation metric name.
        checkpoint: safetensors file written every epoch; with ``resume`` it is read back.
        desc: progress-bar label.
    Returns:
        the best epoch and its validation metric, and the per-epoch history.
    """
    from tqdm.auto import tqdm

    device = device or dist.local_device()
    model.to(device)
    loss_fn = loss_fn or cross_entropy
    params = [p for p in model.parameters() if p.requires_grad]
    if after_step is not None:
        after_step()  # masks hold from the first step, even on a resumed or freshly pruned model
    optimizer = _make_optimizer(params, cfg)
    result = FitResult(best_epoch=-1, best_val=float("-inf"))
    best_state: dict[str, torch.Tensor] = {}
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.is_file():
        start, best_state = _load_checkpoint(ckpt, model, optimizer, result)

    trained = model
    if dist.is_distributed():
        # Same starting point on every rank, then DDP averages the gradients.
        dist.broadcast_state_(model)
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)

    quiet = not dist.is_main() or bool(os.environ.get("TQDM_DISABLE"))
    # A terminal gets a bar; a log file one line per epoch, with no carriage-return redraws.
    lines = not quiet and not sys.stderr.isatty()
    bar = tqdm(range(start, cfg.epochs), desc=desc, unit="epoch", disable=quiet or lines, leave=False,
               initial=start, total=cfg.epochs)
    num_classes = 0  # mixup's label width, read from the model's output on the first batch
    for epoch in bar:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        total, count = torch.zeros((), device=device), 0
        for x, y in _epoch_loader(train, cfg.batch_size, seed, epoch):
            if "shift" in cfg.augment:
                x = random_shift(x)
            x, y = x.to(device), y.to(device)
            if "mixup" in cfg.augment:
                num_classes = num_classes or _output_width(model, x)
                x, y = mixup(x, y, num_classes)  # (N, ...), (N, K) label probabilities
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(trained, x, y)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total += loss.detach() * len(y)
            count += len(y)
        if dist.is_distributed():
            stats = dist.all_reduce_sum(torch.stack([total, torch.tensor(float(count), device=device)]))
            total, count = stats[0], int(stats[1].item())
        train_loss = float(total) / max(count, 1)
        if not math.isfinite(train_loss):  # every later number would be meaningless (and quantization refuses NaN)
            raise ConfigError("lr", f"training diverged: the loss became {train_loss} in epoch {epoch + 1} of "
                                    f"{desc}; try a smaller lr")
        val_value = compute_metric(model, val, metric, device=device)
        result.history.append({"epoch": epoch, "train_loss": train_loss, f"val_{metric}": val_value})
        if val_value > result.best_val:
            result.best_epoch, result.best_val = epoch, val_value
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_value:.4f}")
        if lines:
            print(f"{desc}: epoch {epoch + 1}/{cfg.epochs} loss {train_loss:.4f} val {metric} {val_value:.4f}",
                  file=sys.stderr, flush=True)
        if ckpt is not None and dist.is_main():
            _save_checkpoint(ckpt, epoch + 1, model, optimizer, best_state, result)
    bar.close()
    if best_state:
        model.load_state_dict(best_state)
    return result


def _save_checkpoint(path: Path, next_epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     best_state: dict[str, torch.Tensor], result: FitResult) -> None:
    """Everything needed to continue as if never stopped, without pickle: tensors in safetensors, the rest as
    JSON in the same file's metadata."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors.update({f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    tensors.update({f"best/{k}": v.detach().cpu().contiguous() for k, v in best_state.items()})
    tensors["rng/torch"] = torch.get_rng_state()
    seen: set[int] = set()  # safetensors refuses tensors sharing memory (tied weights): such a tensor is copied
    for key, value in tensors.items():
        if value.untyped_storage().data_ptr() in seen:
            tensors[key] = value.clone()
        seen.add(tensors[key].untyped_storage().data_ptr())
    meta = {"next_epoch": next_epoch, "param_groups": opt["param_groups"], "optim_scalars": scalars,
            "best_epoch": result.best_epoch, "best_val": result.best_val, "history": result.history}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # One file, replaced in one step: the tensors and their metadata can never be from different epochs.
    save_file(tensors, str(tmp), metadata={"torchslim": json.dumps(meta)})
    os.replace(tmp, path)


def _load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     result: FitResult) -> tuple[int, dict[str, torch.Tensor]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["torchslim"])
    tensors = load_file(str(path))
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict[str, object]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value if name == "step" else value.to(device)
    for idx, extra in meta["optim_scalars"].items():
        state.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])
    result.best_epoch, result.best_val, result.history = meta["best_epoch"], meta["best_val"], meta["history"]
    best = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best/")}
    return int(meta["next_epoch"]), best
