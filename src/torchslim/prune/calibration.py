"""Running calibration batches: mean |activation| per unit, and loss gradients for the Taylor importance."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.distributed import module_device


def split_batch(batch) -> tuple[object, torch.Tensor | None]:
    """``(inputs, targets, ...)`` -> (inputs, targets); a bare tensor -> (inputs, None)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(f"a calibration batch must be a tensor or an (inputs, targets) tuple, got {type(batch).__name__}")


def take_batches(data: Iterable | None, n: int) -> list[tuple[object, torch.Tensor | None]]:
    """The first ``n`` batches of ``data`` as (inputs, targets) pairs; [] without data."""
    return [] if data is None else [split_batch(b) for b in islice(iter(data), n)]


def to_device(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) else x


@torch.no_grad()
def mean_abs_activations(model: nn.Module, batches, points: dict[str, tuple[nn.Module, Callable | None, int]],
                         inputs_of: dict[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """Mean |activation| per unit over calibration batches, in eval mode.

    Args:
        model: the model to run.
        batches: (inputs, targets) pairs.
        points: name -> (module to hook, activation applied to its output or None, channel dim).
        inputs_of: name -> module whose *input* is measured instead (last dim), e.g. an attention's out_proj.

    Returns:
        name -> (C,) mean of |a| over every sample and position.
    """
    sums, counts, hooks = {}, {}, []

    def record(name, act, dim, use_input):
        def hook(module, inputs, output):
            a = inputs[0] if use_input else output
            a = act(a) if act is not None else a
            a = a.detach().abs().float().movedim(dim, -1)  # (..., C)
            a = a.reshape(-1, a.shape[-1])
            sums[name] = sums.get(name, 0) + a.sum(0)
            counts[name] = counts.get(name, 0) + a.shape[0]
        return hook

    for name, (module, act, dim) in points.items():
        hooks.append(module.register_forward_hook(record(name, act, dim, False)))
    for name, module in (inputs_of or {}).items():
        hooks.append(module.register_forward_hook(record(name, None, -1, True)))
    was_training, device = model.training, module_device(model)
    model.eval()
    try:
        for x, _ in batches:
            model(to_device(x, device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / counts[n] for n in sums}


def accumulate_gradients(model: nn.Module, batches, loss_fn: Callable | None) -> None:
    """Fill ``.grad`` of every parameter with the loss gradient summed over ``batches`` (eval mode).

    Args:
        loss_fn: ``loss_fn(outputs, targets)``; cross-entropy when None.
    """
    loss_fn = loss_fn or F.cross_entropy
    was_training, device = model.training, module_device(model)
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for x, y in batches:
                if y is None:
                    raise ValueError("the taylor importance needs (inputs, targets) calibration batches")
                loss_fn(model(to_device(x, device)), to_device(y, device)).backward()
    finally:
        model.train(was_training)


def output_taylor(model: nn.Module, batches, loss_fn: Callable | None, points: dict[str, tuple[nn.Module, int]],
                  heads: dict[str, tuple[nn.Module, int]] | None = None) -> dict[str, torch.Tensor]:
    """First-order estimate of the loss change when a unit's output is masked to zero (Michel et al., 2019):
    a mask m of ones multiplies each unit's output, and a unit scores the mean over samples of |∂L/∂m|, which
    is |Σ_positions output · ∂L/∂output| for that sample (eval mode, gradients of the parameters untouched).

    Args:
        loss_fn: ``loss_fn(outputs, targets)``; cross-entropy when None.
        points: name -> (module whose output is masked, channel dim of that output); the leading dim is the sample.
        heads: name -> (module whose *input* (N, L, H * hd) is masked per head, H), e.g. an attention's out_proj.

    Returns:
        name -> (C,) or (H,) mean |∂L/∂m| per unit.
    """
    loss_fn = loss_fn or F.cross_entropy
    masks, sums, count, hooks = {}, {}, [0], []

    def mask_output(name, dim):
        def hook(module, inputs, output):  # output (N, ..., C, ...): C at ``dim``
            shape = [1] * output.dim()
            shape[0], shape[dim] = output.shape[0], output.shape[dim]
            masks[name] = torch.ones(shape, device=output.device, dtype=output.dtype, requires_grad=True)
            return output * masks[name]
        return hook

    def mask_heads(name, h):
        def hook(module, inputs):
            x = inputs[0]  # (N, L, H * hd)
            masks[name] = torch.ones(x.shape[0], 1, h, 1, device=x.device, dtype=x.dtype, requires_grad=True)
            return ((x.unflatten(-1, (h, -1)) * masks[name]).flatten(-2),) + tuple(inputs[1:])
        return hook

    for name, (module, dim) in points.items():
        hooks.append(module.register_forward_hook(mask_output(name, dim)))
    for name, (module, h) in (heads or {}).items():
        hooks.append(module.register_forward_pre_hook(mask_heads(name, h)))
    was_training, device = model.training, module_device(model)
    grads = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)  # only the masks' gradients are wanted
    try:
        with torch.enable_grad():
            for x, y in batches:
                if y is None:
                    raise ValueError("the output_taylor importance needs (inputs, targets) calibration batches")
                loss = loss_fn(model(to_device(x, device)), to_device(y, device))
                # the batch's sum: each sample's mask gets its own loss's gradient, not one divided by N
                total = loss * len(y) if loss.dim() == 0 else loss.sum()
                total.backward()
                for name, m in masks.items():
                    g = m.grad.reshape(m.shape[0], -1).abs().sum(0)  # (C,): Σ_n |∂L_n/∂m|
                    sums[name] = sums.get(name, 0) + g.detach()
                count[0] += len(y)
                masks.clear()
    finally:
        for hook in hooks:
            hook.remove()
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training)
    return {n: s / count[0] for n, s in sums.items()}
