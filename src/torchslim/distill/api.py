"""``distill(student, teacher, data, config, fit=...)``: the verb; the config type picks the handler."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from torchslim._errors import ConfigError
from torchslim.distill.config import KDConfig
from torchslim.distill.objective import DistillLossFn, make_loss_fn
from torchslim.distributed import module_device

__all__ = ["FitFn", "distill", "register_handler"]


class FitFn(Protocol):
    """The training loop: minimise ``loss_fn(model, (x, y))`` over ``data`` for ``epochs``.

    It must optimise ``model``'s parameters and ``extra_params`` together (Adam or similar at ``lr``),
    call ``model.train()``, and batch ``data`` by ``batch_size``. The recipe runner passes torchslim's loop.
    """

    def __call__(
        self,
        *,
        model: nn.Module,
        data: Any,
        loss_fn: Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor],
        extra_params: list[nn.Parameter],
        epochs: int,
        lr: float,
        batch_size: int,
    ) -> Any: ...


_Handler = Callable[[nn.Module, nn.Module, Any, Any, FitFn], nn.Module]
_HANDLERS: dict[type, _Handler] = {}


def register_handler(config_type: type) -> Callable[[_Handler], _Handler]:
    """Decorator: ``handler(student, teacher, data, config, fit)`` runs configs of ``config_type``."""

    def add(handler: _Handler) -> _Handler:
        _HANDLERS[config_type] = handler
        return handler

    return add


def distill(student: nn.Module, teacher: nn.Module, data: Any, config: Any, *, fit: FitFn) -> nn.Module:
    """Train ``student`` (in place) to imitate ``teacher`` on ``data``; returns the student.

    Args:
        student: the network to train; may be ``teacher`` itself, in which case a frozen copy is the teacher.
        teacher: the network to learn from; moved to the student's device, put in eval mode, never updated.
        data: a map-style dataset of ``(x, y)`` pairs or an iterable of ``(x, y)`` batches; handed to ``fit``.
        config: e.g. ``KDConfig(temperature=4.0, alpha=0.9)``; its type selects the handler.
        fit: the training loop (see ``FitFn``); the recipe runner passes torchslim's.

    Returns:
        The trained student.

    Example:
        >>> distill(small, big, train_set, KDConfig(epochs=10), fit=my_loop)  # doctest: +SKIP
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in _HANDLERS))
        raise ConfigError("distill", f"no handler for {type(config).__name__}; known configs: {known}")
    return handler(student, teacher, data, config, fit)


def _probe_batch(data: Any, batch_size: int) -> Sequence[torch.Tensor]:
    # One small batch (x, y) to check shapes before training; a map-style dataset is collated by hand so that
    # no loader (and no worker process) is started for it.
    if isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data, "__len__"):
        n = min(len(data), batch_size)
        if n == 0:
            raise ConfigError("data", "is empty")
        return default_collate([data[i] for i in range(n)])
    if isinstance(data, Iterable):
        for batch in data:
            return batch
        raise ConfigError("data", "is empty")
    raise TypeError(f"data must be a dataset or an iterable of (x, y) batches, got {type(data).__name__}")


@register_handler(KDConfig)
def _distill_kd(student: nn.Module, teacher: nn.Module, data: Any, config: KDConfig, fit: FitFn) -> nn.Module:
    if teacher is student:
        teacher = copy.deepcopy(student)  # self-distillation: the teacher must not move while the student trains
    device = module_device(student)
    teacher.to(device).eval()
    x, y = _probe_batch(data, config.batch_size)
    loss_fn: DistillLossFn = make_loss_fn(student, teacher, config, (x.to(device), y.to(device)))
    try:
        fit(
            model=student,
            data=data,
            loss_fn=loss_fn,
            extra_params=loss_fn.extra_parameters(),
            epochs=config.epochs,
            lr=config.lr,
            batch_size=config.batch_size,
        )
    finally:
        loss_fn.close()
    return student
