"""``prune_(model, config)``: the config's type picks the handler; the schedule loop is shared."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim._parametrized import bake_parametrizations_
from torchslim._tied import tied_weights
from torchslim.distill.losses import KDLoss
from torchslim.prune.config import ActivationConfig, Distill, MagnitudeConfig, StructuredConfig
from torchslim.prune.report import PruneReport
from torchslim.prune.schedule import spread_epochs

__all__ = ["prune_", "register_pruner"]

Finetune = Callable[..., Any]  # (model, epochs, after_step, step, steps[, loss_fn=...])
_HANDLERS: dict[type, Callable[..., PruneReport]] = {}


def register_pruner(config_type: type):
    """Register ``handler(model, config, ctx) -> PruneReport`` as the pruner for ``config_type``."""
    def wrap(handler):
        _HANDLERS[config_type] = handler
        return handler
    return wrap


@dataclass
class PruneContext:
    """What a handler gets besides the model and config: data, loss and the fine-tuning callable."""

    calibration: Iterable | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    finetune: Finetune | None
    example_inputs: Any

    def run_schedule(self, model: nn.Module, config, step_fn: Callable[[int, int], None],
                     after_step: Callable[[], None]) -> None:
        """Prune step by step (``step_fn(t, n)`` for t = 1..n) and fine-tune after each step
        (``finetune(model, epochs, after_step, t, n)``), spreading ``config.finetune.epochs`` over the steps.
        With ``config.finetune.distill``, ``finetune`` also gets ``loss_fn=`` (model, x, y) -> the loss against
        a frozen copy of the model taken before the first step. With ``config.finetune.ema``, ``after_step`` also
        updates a moving average of the weights, which replaces them when each fine-tuning returns."""
        steps = getattr(config, "schedule", None)
        n = steps.steps if steps is not None else 1
        epochs = spread_epochs(config.finetune.epochs, n) if config.finetune is not None else [0] * n
        if any(epochs) and self.finetune is None:
            raise ValueError("the config asks for fine-tuning (finetune.epochs > 0) but no finetune callable "
                             "was given to prune_")
        extra = {}
        if any(epochs) and config.finetune.distill is not None:
            extra["loss_fn"] = distill_loss(copy.deepcopy(model), config.finetune.distill)
        ema = config.finetune.ema if config.finetune is not None else None
        for t in range(1, n + 1):
            step_fn(t, n)
            if epochs[t - 1] > 0:
                if ema is None:
                    self.finetune(model, epochs[t - 1], after_step, t, n, **extra)
                    continue
                average = WeightAverage(model, ema, after_step)  # a step's units are gone: a fresh average
                self.finetune(model, epochs[t - 1], average.after_step, t, n, **extra)
                average.load_into(model)


class WeightAverage:
    """Exponential moving average of a model's floating-point weights and buffers, updated by ``after_step``
    (which first calls the wrapped hook, so masks hold in every averaged state); the first call starts it.

    The n-th update uses ``min(decay, (1 + n) / (10 + n))`` (as TensorFlow's ExponentialMovingAverage with
    ``num_updates``): with a fixed 0.99, the weights the fine-tuning started from kept 45 % of the average after
    80 steps, and a structured model fine-tuned for 2 epochs ended at 63 % validation accuracy against 91 % for its
    last weights."""

    def __init__(self, model: nn.Module, decay: float, after_step: Callable[[], None] | None = None):
        self.model, self.decay, self.hook = model, decay, after_step
        self.average: dict[str, torch.Tensor] = {}
        self.updates = 0

    @torch.no_grad()
    def after_step(self) -> None:
        if self.hook is not None:
            self.hook()
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.average else 0.0
        for name, value in self.model.state_dict().items():
            if not value.is_floating_point():
                continue
            if name not in self.average:
                self.average[name] = value.detach().clone()
            else:
                self.average[name].mul_(decay).add_(value, alpha=1.0 - decay)
        self.updates += decay > 0

    @torch.no_grad()
    def load_into(self, model: nn.Module) -> None:
        """Put the average into ``model`` (integer buffers keep their values); nothing if it never started."""
        state = model.state_dict()
        for name, value in self.average.items():
            state[name].copy_(value.to(state[name].device))


def distill_loss(teacher: nn.Module, config: Distill) -> Callable[[nn.Module, torch.Tensor, torch.Tensor],
                                                                  torch.Tensor]:
    """``loss_fn(model, x, y)`` for the training loop: Hinton KD from ``teacher`` (frozen, eval mode, moved to
    the inputs' device) at ``config.temperature`` with share ``config.alpha``."""
    teacher = teacher.eval().requires_grad_(False)
    kd = KDLoss(config.temperature, config.alpha)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher.to(x.device)(x)  # (N, K)
        return kd(model(x), target, y)

    return loss_fn


def prune_(model: nn.Module, config: MagnitudeConfig | ActivationConfig | StructuredConfig, *,
           calibration: Iterable | None = None,
           loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
           finetune: Finetune | None = None,
           example_inputs: Any = None) -> PruneReport:
    """Prune ``model`` in place as ``config`` says.

    Args:
        model: any ``nn.Module``.
        config: a MagnitudeConfig, ActivationConfig or StructuredConfig.
        calibration: iterable of batches (a DataLoader): ``(inputs, targets, ...)`` tuples or bare input tensors.
            Needed by ActivationConfig and by StructuredConfig with ``activation``/``taylor`` importance; its first
            batch also serves as ``example_inputs``.
        loss_fn: ``loss_fn(outputs, targets)`` for the ``taylor`` importance; cross-entropy by default.
        finetune: ``finetune(model, epochs, after_step, step, steps)`` trains ``model`` for ``epochs`` epochs at
            ``config.finetune.lr``, calling ``after_step()`` after every optimizer step. Called after schedule
            step ``step`` of ``steps`` (those given epochs) when ``config.finetune`` is set; with
            ``config.finetune.distill`` it also gets ``loss_fn=``, the ``(model, x, y) -> loss`` to train on.
        example_inputs: one input batch for tracing the model (structured and activation methods), when no
            calibration data is given.

    Returns:
        a PruneReport: per-layer shapes and counts, achieved sparsity, masks and the ``after_step`` hook.

    Example:
        >>> report = prune_(model, MagnitudeConfig(sparsity=0.9, scope="global"))  # doctest: +SKIP
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in _HANDLERS))
        raise TypeError(f"no pruner for {type(config).__name__}; known configs: {known}")
    bake_parametrizations_(model)  # weight_norm & co.: a weight that masks and cuts stay on
    tied = tied_weights(model)
    if tied:  # cutting or masking one holder's weight would change, or untie, the other's
        config = dataclasses.replace(config, ignore=tuple(config.ignore) + tuple(tied))
    return handler(model, config, PruneContext(calibration, loss_fn, finetune, example_inputs))


def _register_builtin() -> None:
    from torchslim.prune.magnitude import prune_magnitude_
    from torchslim.prune.structured import prune_activation_, prune_structured_

    register_pruner(MagnitudeConfig)(prune_magnitude_)
    register_pruner(ActivationConfig)(prune_activation_)
    register_pruner(StructuredConfig)(prune_structured_)


_register_builtin()
