"""What pruning did, per layer and in total: shapes, parameters, non-zeros, removed units."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from torchslim._recurrent import is_recurrent
from torchslim._tied import tied_reason, tied_weights
from torchslim.evaluate import count_params
from torchslim.prune.attention import PrunableMultiheadAttention
from torchslim.prune.masks import masked_weight

__all__ = ["LayerReport", "PruneReport", "weight_layers"]

WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, PrunableMultiheadAttention)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose weights pruning acts on: Linear, ConvNd and prunable attention, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # scales and shifts: no weights to prune


def unpruned_layers(model: nn.Module, acted_on: Iterable[str] = (), *, structured: bool = True) -> dict[str, str]:
    """{module: why} for the modules holding weights of their own that the pruning method left alone (recurrent
    layers, which only magnitude pruning acts on, in ``acted_on`` then; embedding tables; attention that could not
    be made prunable), so a report can name them rather than count only what it touched. Normalization layers are
    not listed: they scale, they hold no weights to prune. ``structured``: the method removes channels (whose cut
    takes such parameters' slices along), rather than zeroing single weights."""
    out, tied, acted_on = {}, tied_weights(model), set(acted_on)
    for name, module in model.named_modules():
        if name in tied:
            out[name] = tied_reason(tied[name])
            continue
        if (isinstance(module, WEIGHT_LAYERS + _NORMS) or name in acted_on
                or not any(True for _ in module.parameters(recurse=False))):
            continue
        if is_recurrent(module):
            out[name] = "a recurrent layer: only magnitude pruning acts on its gates"
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            out[name] = "an embedding table"
        elif isinstance(module, nn.MultiheadAttention):  # plain self-attention is converted; out_proj is a Linear
            out[name] = "attention with kdim/vdim, add_bias_kv or add_zero_attn: its in-projection is kept whole"
        else:  # e.g. learned positions held by the model itself, or a custom layer's own parameters
            own = ", ".join(f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False))
            holder = "the model" if not name else f"a {type(module).__name__}"
            out[own] = (f"parameters of {holder} itself: not pruned on their own (a cut of the channels they follow "
                        f"takes theirs too)" if structured else
                        f"parameters of {holder} itself: not pruned (not the weight of a Linear, convolution, "
                        f"attention or recurrent layer)")
    return out


def _weights(module: nn.Module) -> torch.Tensor:
    # attention: the q/k/v projection (its out_proj is reported as a Linear of its own); a recurrent layer: its
    # matrices joined
    if isinstance(module, PrunableMultiheadAttention):
        return module.in_proj_weight
    return masked_weight(module)


@dataclass(frozen=True)
class _Snapshot:
    shape: tuple[int, ...]
    params: int  # weight + bias of the module itself (not of its children)
    nonzero: int  # non-zero weights


def snapshot(modules: dict[str, nn.Module]) -> dict[str, _Snapshot]:
    """Shapes and counts of ``modules``' weights now."""
    out = {}
    for name, m in modules.items():
        w = _weights(m)
        own = sum(p.numel() for p in m.parameters(recurse=False))
        out[name] = _Snapshot(tuple(w.shape), own, int(torch.count_nonzero(w)))
    return out


def model_size(model: nn.Module) -> tuple[int, int, int]:
    """(parameters, non-zero parameters, bytes of parameters and buffers) of ``model``; parameters counted as
    the run's reports count them (:func:`torchslim.evaluate.count_params`)."""
    params, nonzero = count_params(model)
    nbytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return params, nonzero, nbytes


@dataclass(frozen=True)
class LayerReport:
    """One layer before and after pruning.

    ``removed`` lists the output units (channels, neurons; heads for attention) removed, as indices into the
    layer's original outputs; empty for unstructured pruning, which removes none.
    """

    name: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...]
    params_before: int
    params_after: int
    weights_before: int
    nonzero_after: int
    removed: tuple[int, ...] = ()


@dataclass
class PruneReport:
    """The result of :func:`torchslim.prune.prune_`.

    Attributes:
        method: ``magnitude``, ``activation`` or ``structured``.
        layers: the layers pruning acted on.
        params_before, params_after: parameters of the whole model.
        nonzero_before, nonzero_after: non-zero parameters of the whole model.
        bytes_before, bytes_after: bytes of parameters and buffers of the whole model.
        sparsity: fraction of the listed layers' weights that are now zero or gone.
        masks: for magnitude pruning, layer name -> bool keep-mask of its weight; else empty.
        after_step: call after every optimizer step of later training to keep pruned weights at zero.
        refit: for structured pruning with ``reconstruct``, the layers refit after a cut, in forward order.
        unpruned: {module: why} for modules with weights of their own that no method prunes (a GRU, an embedding).
        notes: what the method has to say about this model (e.g. why activation pruning removed nothing).
    """

    method: str
    layers: tuple[LayerReport, ...]
    params_before: int
    params_after: int
    nonzero_before: int
    nonzero_after: int
    bytes_before: int
    bytes_after: int
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    after_step: Callable[[], None] = lambda: None
    refit: tuple[str, ...] = ()
    unpruned: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def sparsity(self) -> float:
        before = sum(layer.weights_before for layer in self.layers)
        after = sum(layer.nonzero_after for layer in self.layers)
        return 1.0 - after / before if before else 0.0

    def layer(self, name: str) -> LayerReport:
        """The entry of layer ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def build_report(method: str, names: Iterable[str], before: dict[str, _Snapshot], after_modules: dict[str, nn.Module],
                 size_before: tuple[int, int, int], model: nn.Module, removed: dict[str, list[int]],
                 masks: dict[str, torch.Tensor] | None = None,
                 after_step: Callable[[], None] | None = None, refit: Iterable[str] = ()) -> PruneReport:
    """Assemble a :class:`PruneReport` from the snapshot taken before pruning and the model now."""
    after = snapshot({n: after_modules[n] for n in names})
    layers = tuple(
        LayerReport(n, before[n].shape, after[n].shape, before[n].params, after[n].params,
                    _numel(before[n].shape), after[n].nonzero, tuple(sorted(removed.get(n, ()))))
        for n in names)
    params, nonzero, nbytes = model_size(model)
    return PruneReport(method, layers, size_before[0], params, size_before[1], nonzero, size_before[2], nbytes,
                       masks or {}, after_step or (lambda: None), tuple(refit),
                       unpruned_layers(model, names, structured=method != "magnitude"))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
