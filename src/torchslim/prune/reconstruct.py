"""Least-squares reconstruction after structured pruning.

Removing a unit takes its contribution out of every layer that read it. Instead of leaving those *consumer*
layers to fine-tuning, each is refit on calibration data so that, fed the pruned model's inputs, it reproduces
what it computed in the unpruned model: the closed-form least-squares step of channel pruning (He et al., 2017)
and of post-training transformer pruning (Kwon et al., 2022). Consumers are refit in the order the forward pass
reaches them, so each one also corrects what the pruning changed upstream of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.distributed import module_device
from torchslim.prune.calibration import to_device

__all__ = ["FOLDS", "RIDGES", "consumers", "reconstruct_"]

# Ridges tried, relative to the normal equations' mean diagonal: each layer takes the one whose refit best predicts
# calibration data it was not fit to (FOLDS-fold cross-validation over the batches). Smaller ridges predict held-out
# batches a little better still, but through high-gain weights (a 4-layer encoder's attention out-projection at 5x
# its norm, rebuilding two removed heads from two kept ones) that fine-tuning at the training's learning rate
# then throws off: measured on tests/zoo's encoder, 1e-3 made two epochs at lr 1e-3 collapse to chance.
RIDGES = (1e-2, 1e-1, 1.0)
FOLDS = 4


def _inputs_of(module: nn.Module) -> int | None:
    """Input width of a layer reconstruction can refit (Linear; Conv1d/2d without groups, zero padding), else None."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1 and module.padding_mode == "zeros" \
            and not isinstance(module.padding, str):
        return module.in_channels
    return None


def consumers(model: nn.Module, reference: nn.Module) -> list[str]:
    """Names of ``model``'s refittable layers that read fewer inputs than the same-named layer of ``reference``."""
    found = []
    for name, module in model.named_modules():
        width = _inputs_of(module)
        if width is None:
            continue
        try:
            before = reference.get_submodule(name)
        except AttributeError:
            continue
        width_before = _inputs_of(before) if type(before) is type(module) else None
        if width_before is not None and width < width_before:
            found.append(name)
    return found


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of what each output element multiplies: (..., in) or im2col patches."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation = (1, module.kernel_size[0]), (1, module.dilation[0])
        padding, stride = (0, module.padding[0]), (1, module.stride[0])
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C·k, L)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _targets(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The reference layer's output as rows (one per output position), each row its output channels."""
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.movedim(1, -1).reshape(-1, y.shape[1])


def _call_order(model: nn.Module, names: Sequence[str], x) -> list[str]:
    """``names`` in the order one forward pass first calls them."""
    order, hooks = [], []
    for name in names:
        hooks.append(model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: order.append(name) if name not in order else None))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order + [n for n in names if n not in order]


class _NormalEquations:
    """XᵀX, XᵀY and ΣY² of a least-squares problem, kept per fold of the calibration data, so that held-out
    errors come from them without keeping a row: err(W) = ΣY² − 2⟨W, XᵀY⟩ + ⟨W, XᵀX W⟩."""

    def __init__(self, folds: int):
        self.gram: list[torch.Tensor | None] = [None] * folds
        self.cross: list[torch.Tensor | None] = [None] * folds
        self.yy = [0.0] * folds

    def add(self, fold: int, rows: torch.Tensor, target: torch.Tensor) -> None:
        gram, cross = rows.T @ rows, rows.T @ target
        self.gram[fold] = gram if self.gram[fold] is None else self.gram[fold] + gram
        self.cross[fold] = cross if self.cross[fold] is None else self.cross[fold] + cross
        self.yy[fold] += float((target * target).sum())

    def folds(self, leave_out: int | None = None) -> list[int]:
        """The folds that got rows, but ``leave_out``."""
        return [f for f, g in enumerate(self.gram) if f != leave_out and g is not None]

    def solve(self, ridge: float, leave_out: int | None = None) -> torch.Tensor:
        folds = self.folds(leave_out)
        gram, cross = sum(self.gram[f] for f in folds), sum(self.cross[f] for f in folds)
        scale = gram.diagonal().mean().clamp_min(1e-12)
        return torch.linalg.solve(gram + ridge * scale * torch.eye(len(gram), dtype=gram.dtype,
                                                                    device=gram.device), cross)

    def error(self, w: torch.Tensor, folds: Sequence[int]) -> float:
        return sum(self.yy[f] - 2 * float((w * self.cross[f]).sum()) + float((w * (self.gram[f] @ w)).sum())
                   for f in folds)

    def cross_validated(self, ridge: float) -> float:
        """Summed error of each fold under the solution fit to the others."""
        return sum(self.error(self.solve(ridge, leave_out=f), [f]) for f in self.folds())


def _as_solution(module: nn.Module) -> torch.Tensor:
    """The layer's current weights in the solution's layout: (inputs [+ 1 for the bias], outputs)."""
    w = module.weight.detach().reshape(module.weight.shape[0], -1).T.double()
    return torch.cat([w, module.bias.detach().double()[None]], 0) if module.bias is not None else w


@torch.no_grad()
def _refit(model: nn.Module, reference: nn.Module, name: str, batches, kept_outputs: Sequence[int] | None,
           ridge: float | None) -> bool:
    """Refit ``name``; False where it was left as it was (it never ran, or no refit beat it held out)."""
    module, before = model.get_submodule(name), reference.get_submodule(name)
    inputs, outputs, hooks = [], [], []
    hooks.append(module.register_forward_hook(lambda m, i, o: inputs.append(i[0].detach())))
    hooks.append(before.register_forward_hook(lambda m, i, o: outputs.append(o.detach())))
    device, has_bias = module_device(model), module.bias is not None
    split = len(batches) == 1  # one batch: its two halves are the folds
    normal = _NormalEquations(2 if split else min(FOLDS, len(batches)))
    kept = None if kept_outputs is None else torch.as_tensor(list(kept_outputs), dtype=torch.long, device=device)
    try:
        for b, (x, _) in enumerate(batches):
            x = to_device(x, device)
            model(x)
            reference(x)  # the same every call: recomputed rather than kept, calibration activations can be large
            for a, y in zip(inputs, outputs):  # a layer called more than once: its calls pair in order
                rows = _rows(module, a).double()
                if has_bias:
                    rows = torch.cat([rows, rows.new_ones(len(rows), 1)], 1)
                target = _targets(module, y).double()
                if kept is not None:
                    target = target[:, kept]
                if split:  # rows run sample by sample: the halves are two sets of samples
                    half = len(rows) // 2
                    normal.add(0, rows[:half], target[:half])
                    normal.add(1, rows[half:], target[half:])
                else:
                    normal.add(b % len(normal.gram), rows, target)
            inputs.clear()
            outputs.clear()
    finally:
        for h in hooks:
            h.remove()
    if not normal.folds():
        return False  # the layer never ran on the calibration data: nothing to fit it to
    if ridge is None:  # the ridge whose refit predicts held-out calibration data best, if any beats the layer as cut
        held_out = {r: normal.cross_validated(r) for r in RIDGES}
        ridge = min(held_out, key=held_out.get)
        if held_out[ridge] >= normal.error(_as_solution(module), normal.folds()):
            return False
    solution = normal.solve(ridge)  # (inputs [+ 1], outputs)
    weight = solution[:-1] if has_bias else solution
    module.weight.copy_(weight.T.reshape(module.weight.shape).to(module.weight.dtype))
    if has_bias:
        module.bias.copy_(solution[-1].to(module.bias.dtype))
    return True


def reconstruct_(model: nn.Module, reference: nn.Module, batches,
                 kept_outputs: Mapping[str, Sequence[int]] | None = None, ridge: float | None = None) -> list[str]:
    """Refit every layer of ``model`` that lost inputs to reproduce ``reference``'s same-named layer.

    Args:
        model: the pruned model (changed in place).
        reference: the model before the cut, the same module names; not changed.
        batches: calibration (inputs, targets) pairs; only the inputs are used.
        kept_outputs: layer name -> which of the reference layer's outputs the pruned layer still has
            (positions), for consumers whose own outputs were cut too; absent: all of them.
        ridge: the normal equations' ridge, relative to their mean diagonal; None: chosen per layer among
            ``RIDGES`` by cross-validation over the batches, and a layer whose best refit predicts held-out
            batches no better than its weights as cut keeps them.

    Returns:
        the names refit, in the order they were.
    """
    names = consumers(model, reference)
    if not names or not batches:
        return []
    was_training, ref_training = model.training, reference.training
    model.eval()
    reference.eval()
    try:
        order = _call_order(model, names, to_device(batches[0][0], module_device(model)))
        refit = [name for name in order
                 if _refit(model, reference, name, batches, (kept_outputs or {}).get(name), ridge)]
    finally:
        model.train(was_training)
        reference.train(ref_training)
    return refit
