"""Coupling mechanics: which channels must be removed together, found by torch-pruning's DependencyGraph.

A *unit* is what one importance score ranks and one cut removes:

* a :class:`ChannelUnit`: the output channels/neurons of one Linear/ConvNd layer together with everything coupled
  to them (residual adds, concatenations, flatten, BatchNorm, the next layers' inputs);
* a :class:`HeadUnit`: the heads of one :class:`PrunableMultiheadAttention`.

Never units: channels that reach the model's output (the classes), the residual stream of a transformer
(``d_model``), which is every group coupled to an attention module's embedding dimension, and the inputs and
outputs of a recurrent layer (RNN, LSTM, GRU), whose gates are not cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from torchslim._tied import tied_weights
from torchslim.prune._select import LayerSelector
from torchslim.prune.attention import PrunableMultiheadAttention

OPTYPE = tp.ops.OPTYPE
CHANNEL_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
# node types that mix channels: an output layer's channels stop being "the output" past one of these
_MIXING = {OPTYPE.CONV, OPTYPE.LINEAR, OPTYPE.CUSTOMIZED, OPTYPE.MHA, OPTYPE.LSTM, OPTYPE.EMBED}
# post-activation functions recognised after a layer (autograd node name -> function)
_ACTIVATIONS = {
    "ReluBackward0": torch.relu,
    "GeluBackward0": torch.nn.functional.gelu,
    "SiluBackward0": torch.nn.functional.silu,
    "TanhBackward0": torch.tanh,
    "SigmoidBackward0": torch.sigmoid,
}


class _EmbedDimIsFixed(tp.pruner.function.BasePruningFunc):
    """Shows the graph an attention module as one layer of width ``embed_dim`` (its heads are cut separately)."""

    def prune_out_channels(self, layer, idxs):
        raise RuntimeError("the embedding dimension (d_model) of an attention module is never pruned")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.embed_dim

    def get_in_channels(self, layer):
        return layer.embed_dim


class _WidthsAreFixed(tp.pruner.function.BasePruningFunc):
    """Shows the graph a recurrent layer as one layer whose input and output widths are never cut (torch-pruning's
    own LSTM pruning handles one unidirectional layer, and cuts its input-to-hidden matrices on the wrong axis)."""

    def prune_out_channels(self, layer, idxs):
        raise RuntimeError("a recurrent layer's widths are never pruned")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return (layer.proj_size or layer.hidden_size) * (2 if layer.bidirectional else 1)

    def get_in_channels(self, layer):
        return layer.input_size


class _RunWhole(torch.autograd.Function):
    """A recurrent layer's forward as one autograd node whose inputs are the layer's inputs: its trace then does
    not wander through the layer's internal concatenations (of directions and layers), which torch-pruning cannot
    size. Tracing only: no gradient flows back through it."""

    @staticmethod
    def forward(ctx, forward, x, *hx):
        out, state = forward(x, (hx if len(hx) > 1 else hx[0]) if hx else None)
        return (out, *(state if isinstance(state, tuple) else (state,)))

    @staticmethod
    def backward(ctx, *grads):
        return (None,) * len(ctx.needs_input_grad)


class _RecurrentAsOneNode:
    """Within it, each RNN / LSTM / GRU of ``model`` given a plain tensor runs as one node (:class:`_RunWhole`)."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
        self.own = {id(m): vars(m)["forward"] for m in self.layers if "forward" in vars(m)}  # set on the instance

    def __enter__(self):
        for layer in self.layers:
            layer.forward = self._whole(layer)
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            del layer.forward
            if id(layer) in self.own:
                layer.forward = self.own[id(layer)]

    @staticmethod
    def _whole(layer: nn.RNNBase):
        forward = vars(layer).get("forward") or type(layer).forward.__get__(layer)

        def run(x, hx=None):
            if not isinstance(x, torch.Tensor):  # a PackedSequence: as torch runs it
                return forward(x, hx)
            states = () if hx is None else (hx if isinstance(hx, tuple) else (hx,))
            out, *state = _RunWhole.apply(forward, x, *states)
            return out, (tuple(state) if isinstance(layer, nn.LSTM) else state[0])

        return run


class _ChannelConcats(TorchFunctionMode):
    """Records the widths of every ``torch.cat`` along dim 1 (channels, or the features of (N, F) tensors) in a
    forward pass, keyed by the result's autograd node: the node torch-pruning's trace finds it by."""

    def __init__(self):
        super().__init__()
        self.widths: dict[object, list[int]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONCATS and isinstance(out, torch.Tensor) and out.grad_fn is not None and out.dim() >= 2:
            tensors = args[0] if args else kwargs["tensors"]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if dim % out.dim() == 1:
                self.widths[out.grad_fn] = [int(t.shape[1]) for t in tensors]
        return out


_CONCATS = (torch.cat, torch.concat, torch.concatenate)


def _map_channel_concats(graph: tp.DependencyGraph, widths: dict[object, list[int]] | None = None) -> None:
    """Give every channel concatenation torch-pruning leaves unmapped its offsets, from its inputs' widths now.

    torch-pruning checks a concatenation's width by following its output to the next layer; through a flatten
    it finds the Linear's ``in_features`` (channels × positions), takes the concatenation for one along another
    dim and maps nothing, and the concatenated layers' channels are then coupled as if they were one layer's (a
    cut of one removes the same indices from the other, past its width). With ``widths`` (the trace's
    :class:`_ChannelConcats`), a concatenation is mapped here when the input widths torch-pruning inferred are
    those the forward pass concatenated along dim 1 (which rules out token concatenations); without, the ones
    mapped before are brought up to date: torch-pruning updates a concatenation's widths as its inputs are cut
    but recomputes offsets only for those it maps itself.
    """
    from torch_pruning.dependency.index_mapping import _ConcatIndexMapping

    for node in graph.module2node.values():
        if node.type != OPTYPE.CONCAT or not node.enable_index_mapping:
            continue
        sizes = node.module.concat_sizes
        mapped_here = getattr(node.module, "channel_offsets_by_torchslim", False)
        if not mapped_here and (widths is None or node.module.offsets is not None or widths.get(node.grad_fn) != sizes
                                or len(node.inputs) != len(sizes)):
            continue
        offsets = [0]
        for w in sizes:
            offsets.append(offsets[-1] + w)
        node.module.offsets, node.module.channel_offsets_by_torchslim = offsets, True
        for i, producer in enumerate(node.inputs):
            back = next(d for d in node.dependencies if d.target == producer)
            back.index_mapping[1] = _ConcatIndexMapping(offset=offsets[i:i + 2], reverse=True)
            forward = next(d for d in producer.dependencies if d.target == node)
            forward.index_mapping[1] = _ConcatIndexMapping(offset=offsets[i:i + 2], reverse=False)


def build_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    """Trace ``model`` on ``example_inputs`` (one batch) into a dependency graph."""
    was_training = model.training
    concats = _ChannelConcats()
    fixed = _WidthsAreFixed()
    with torch.enable_grad(), concats, _RecurrentAsOneNode(model):
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, verbose=False,
            customized_pruners={PrunableMultiheadAttention: _EmbedDimIsFixed(), nn.RNN: fixed, nn.LSTM: fixed,
                                nn.GRU: fixed})
    _map_channel_concats(graph, concats.widths)
    model.train(was_training)
    return graph


@dataclass
class ChannelUnit:
    """Coupled output channels rooted at layer ``name``; ``size`` channels now."""

    name: str
    root: nn.Module
    group: object  # torch-pruning Group over all channels
    producers: list[tuple[str, nn.Module]]  # Linear/ConvNd layers whose outputs are these channels
    size: int
    channel_groups: int = 1  # grouped convolutions: channels are removed the same in each of these groups
    # root channels one cut removes together, where a layer's channels are coupled with each other (a chunk whose
    # halves are multiplied, as in a GLU gate: [[0, 16], [1, 17], ...]); None: every channel on its own
    coupled: list[list[int]] | None = None
    # 2-D convolutions that read or write these channels: "depthwise" (one filters them), "conv", or None
    conv2d: str | None = None

    @property
    def sets(self) -> int:
        """How many separately removable sets of channels the unit has."""
        return len(self.coupled) if self.coupled else self.size

    def channels_of(self, sets: Sequence[int]) -> list[int]:
        """The root channels of the given sets."""
        return sorted(c for s in sets for c in self.coupled[s]) if self.coupled else sorted(int(s) for s in sets)

    def cut_step(self, original: int) -> int:
        """How many channels one cut removes at a time, for a unit that had ``original`` channels: the conv
        groups, or a block of CONV_BLOCK (a multiple of them) where 2-D convolutions run on blocks (see there)."""
        block = math.lcm(self.channel_groups, CONV_BLOCK)
        if self.coupled is None and self.size % block == 0 and (
                self.conv2d == "depthwise" or (self.conv2d and original >= BLOCKED_FROM)):
            return block
        return self.channel_groups

    def per_set(self, scores: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        """(size,) per-channel scores → (sets,): summed (``sum``) or the largest (``max``) over each set."""
        if not self.coupled:
            return scores
        return torch.stack([getattr(scores[c], reduce)() for c in self.coupled])


@dataclass
class HeadUnit:
    """The heads of attention module ``name``."""

    name: str
    module: PrunableMultiheadAttention
    size: int = field(init=False)

    def __post_init__(self):
        self.size = self.module.num_heads


def _is_out(graph, dep) -> bool:
    return graph.is_out_channel_pruning_fn(dep.handler)


def feeds_output(graph: tp.DependencyGraph, module: nn.Module) -> bool:
    """Whether ``module``'s channels reach the model's output without passing through another layer."""
    stack, seen = [graph.module2node[module]], set()
    while stack:
        node = stack.pop()
        if not node.outputs:  # nothing consumes it: the trace ended here, so this is a model output
            return True
        for out in node.outputs:
            if out.type == OPTYPE.OUTPUT:
                return True
            if out not in seen and out.type not in _MIXING:
                seen.add(out)
                stack.append(out)
    return False


# ONNX Runtime computes 2-D convolutions on channels in blocks of 8 (16 on AVX-512): a count off the blocks falls
# to a generic kernel, measured on x86 (ORT 1.2x, one thread, batch 64) at 3x the time of a 3x3 conv with 16 input
# channels for 19, 1.5x for 38 against 40, and 30-40x for a depthwise 7x7 conv (19 or 38 channels against 16 or
# 40). So channels that a depthwise 2-D conv filters, or other 2-D convs read or write when a layer had at least
# BLOCKED_FROM of them (where one block is a small step), are removed in whole blocks.
CONV_BLOCK, BLOCKED_FROM = 8, 32


def _conv2d(group) -> str | None:
    """:attr:`ChannelUnit.conv2d` of a group."""
    convs = [dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Conv2d)]
    if any(m.groups > 1 and m.groups == m.in_channels == m.out_channels for m in convs):
        return "depthwise"
    return "conv" if convs else None


def _channel_groups(group) -> int:
    """Groups coupled to these channels, of grouped convs (not depthwise: they follow any cut) and GroupNorms:
    cuts must be equal in each group, so every group keeps as many channels as the others."""
    g = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.GroupNorm):
            g = math.lcm(g, m.num_groups)
        elif isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 \
                and not m.groups == m.in_channels == m.out_channels:
            g = math.lcm(g, m.groups)
    return g


def _traced_consistently(graph: tp.DependencyGraph, group, producers, size: int) -> bool:
    """Whether a group's channels are one set: every producer ``size`` wide and every index within the layer it
    cuts. A trace torch-pruning cannot map (a reshape it does not follow) can couple layers of different widths."""
    if any(_channels(m, out=True) != size for _, m in producers):
        return False
    return all(int(i) < _channels(dep.target.module, out=_is_out(graph, dep))
               for dep, idxs in group if isinstance(dep.target.module, CHANNEL_LAYERS) for i in idxs)


def _coupled_sets(graph: tp.DependencyGraph, root: nn.Module, producers, size: int) -> list[list[int]] | None:
    """Which of the root's channels a cut must remove together because they are coupled with each other (a chunk
    or split whose parts meet again in an add or a product); None when each channel is coupled only with itself.

    torch-pruning follows such a coupling when it cuts (removing channel 1 of a GLU's 32 removes 17 too), so
    ranking the 32 channels on their own could remove both halves of every pair: the whole layer.
    """
    fn = graph.get_pruner_of_module(root).prune_out_channels
    layers = {m for _, m in producers}

    def cut_with(i: int) -> set[int]:
        return {int(j) for dep, idxs in graph.get_pruning_group(root, fn, [i])
                if dep.target.module in layers and _is_out(graph, dep) for j in idxs}

    if all(cut_with(i) == {i} for i in {0, size - 1}):
        return None
    owner = list(range(size))  # union-find over the root's channels

    def find(i: int) -> int:
        while owner[i] != i:
            owner[i] = owner[owner[i]]
            i = owner[i]
        return i

    for i in range(size):
        for j in cut_with(i):
            owner[find(j)] = find(i)
    sets: dict[int, list[int]] = {}
    for i in range(size):
        sets.setdefault(find(i), []).append(i)
    return sorted(sets.values())


def _channels(layer: nn.Module, out: bool) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features if out else layer.in_features
    return layer.out_channels if out else layer.in_channels


def channel_units(model: nn.Module, graph: tp.DependencyGraph, selector: LayerSelector,
                  untraced: list[str] | None = None, reaching_tied: dict[str, list[str]] | None = None,
                  reaching_recurrent: dict[str, list[str]] | None = None) -> list[ChannelUnit]:
    """The prunable channel groups of ``model`` not excluded by ``selector``. A group whose trace is not
    consistent (:func:`_traced_consistently`) is left whole and its layers' names appended to ``untraced``; one
    that reaches a layer with a tied weight (:func:`torchslim._tied.tied_weights`) is left whole and its layers
    put in ``reaching_tied`` with the tied layers they reach; so is one that feeds or reads a recurrent layer, in
    ``reaching_recurrent``."""
    names = {m: n for n, m in model.named_modules()}
    tied = {model.get_submodule(n) for n in tied_weights(model)}  # cutting their channels would untie them
    units = []
    for group in graph.get_all_groups(root_module_types=CHANNEL_LAYERS):
        producers = [(names[dep.target.module], dep.target.module) for dep, _ in group
                     if _is_out(graph, dep) and isinstance(dep.target.module, CHANNEL_LAYERS)]
        fixed = [dep.target.module for dep, _ in group if dep.target.type == OPTYPE.CUSTOMIZED]
        if fixed:  # coupled to an attention module's embed dim (the residual stream) or a recurrent layer
            recurrent = sorted({names[m] for m in fixed if isinstance(m, nn.RNNBase)})
            if recurrent and reaching_recurrent is not None and producers and not any(
                    feeds_output(graph, m) or selector.is_ignored(n) for n, m in producers):
                reaching_recurrent.update((n, recurrent) for n, _ in producers if n not in reaching_recurrent)
            continue
        if not producers or any(feeds_output(graph, m) for _, m in producers):
            continue
        if any(selector.is_ignored(n) for n, _ in producers):
            continue
        reach = sorted({names[dep.target.module] for dep, _ in group if dep.target.module in tied})
        if reach:
            if reaching_tied is not None:
                reaching_tied.update((n, reach) for n, _ in producers if n not in reaching_tied)
            continue
        root, size, channel_groups = group[0].dep.target.module, len(group[0].idxs), _channel_groups(group)
        consistent = _traced_consistently(graph, group, producers, size)
        coupled = _coupled_sets(graph, root, producers, size) if consistent else None
        if not consistent or (coupled and channel_groups > 1):  # (coupled sets in grouped convs: not handled)
            if untraced is not None:
                untraced.extend(n for n, _ in producers if n not in untraced)
            continue
        units.append(ChannelUnit(names[root], root, group, producers, size, channel_groups, coupled,
                                 _conv2d(group)))
    order = {n: i for i, n in enumerate(names.values())}
    return sorted(units, key=lambda u: order[u.name])  # model order, not trace order


def head_units(model: nn.Module, selector: LayerSelector) -> list[HeadUnit]:
    """The attention modules whose heads may be removed."""
    return [HeadUnit(n, m) for n, m in model.named_modules()
            if isinstance(m, PrunableMultiheadAttention) and not selector.is_ignored(n)]


def activation_point(graph: tp.DependencyGraph, layer: nn.Module):
    """Where a layer's units are "active": after its BatchNorm, if any, and its nonlinearity, if one follows.

    Returns:
        (module to hook, function applied to that module's output or None, channel dim of that output).
    """
    node, hook = graph.module2node[layer], layer
    while len(node.outputs) == 1 and node.outputs[0].type == OPTYPE.BN:
        node = node.outputs[0]
        hook = node.module
    act = None
    if len(node.outputs) == 1 and node.outputs[0].type == OPTYPE.ELEMENTWISE:
        grad_fn = node.outputs[0].grad_fn
        act = _ACTIVATIONS.get(grad_fn.name()) if hasattr(grad_fn, "name") else None
    return hook, act, (-1 if isinstance(hook, nn.Linear) else 1)


def prune_channels(graph: tp.DependencyGraph, unit: ChannelUnit, idxs: Sequence[int]) -> dict[str, list[int]]:
    """Remove channels ``idxs`` (root-layer indices) of ``unit`` and everything coupled to them.

    Returns:
        layer name -> its output indices removed (indices into its outputs before this cut).
    """
    root_fn = graph.get_pruner_of_module(unit.root).prune_out_channels
    _map_channel_concats(graph)  # an earlier cut may have narrowed a concatenation's inputs
    group = graph.get_pruning_group(unit.root, root_fn, sorted(int(i) for i in idxs))
    names = {m: n for n, m in graph.model.named_modules()}
    removed = {}
    for dep, dep_idxs in group:
        if _is_out(graph, dep) and isinstance(dep.target.module, CHANNEL_LAYERS):
            removed[names[dep.target.module]] = list(dep_idxs)
    group.prune()
    return removed
