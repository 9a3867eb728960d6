"""Structured pruning: remove whole channels, neurons and attention heads, so the model physically shrinks.

Two policies share the mechanics: :class:`StructuredConfig` removes the lowest-importance fraction of each unit,
:class:`ActivationConfig` removes the units whose normalised mean |activation| is below a threshold.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim.prune._select import LayerSelector, count
from torchslim.prune.attention import PrunableMultiheadAttention, convert_attention_, prune_heads_
from torchslim.distributed import module_device
from torchslim.prune.calibration import (accumulate_gradients, mean_abs_activations, output_taylor, take_batches,
                                         to_device)
from torchslim.prune.config import ActivationConfig, StructuredConfig
from torchslim.prune.graph import (CONV_BLOCK, ChannelUnit, HeadUnit, activation_point, build_graph,
                                   channel_units, head_units, prune_channels)
from torchslim.prune.importance import channel_scores, head_scores, producer_activation
from torchslim.prune.reconstruct import reconstruct_
from torchslim.prune.report import PruneReport, build_report, model_size, snapshot, weight_layers
from torchslim.prune.schedule import sparsity_at


def _lowest(scores: torch.Tensor, k: int, channel_groups: int = 1) -> list[int]:
    """Indices of the ``k`` lowest scores; with conv groups, the same positions in each group."""
    if channel_groups == 1:
        return torch.argsort(scores, stable=True)[:k].tolist()
    per = scores.numel() // channel_groups
    positions = torch.argsort(scores.view(channel_groups, per).sum(0), stable=True)[:k // channel_groups]
    return sorted(g * per + int(p) for g in range(channel_groups) for p in positions)


class _Tracker:
    """Keeps, per layer, which original output units are still there, to report removals in original indices."""

    def __init__(self, layers: dict[str, nn.Module]):
        self.kept = {n: list(range(_outputs(m))) for n, m in layers.items()}
        self.removed: dict[str, list[int]] = {n: [] for n in layers}

    def remove(self, name: str, idxs) -> None:
        gone = set(int(i) for i in idxs)
        self.removed[name] += [o for i, o in enumerate(self.kept[name]) if i in gone]
        self.kept[name] = [o for i, o in enumerate(self.kept[name]) if i not in gone]

    def positions(self, before: dict[str, list[int]]) -> dict[str, list[int]]:
        """Per layer, where each output kept now sat among the outputs it had at ``before``."""
        where = {n: {o: i for i, o in enumerate(b)} for n, b in before.items()}
        return {n: [where[n][o] for o in kept] for n, kept in self.kept.items()}


def _outputs(m: nn.Module) -> int:
    if isinstance(m, PrunableMultiheadAttention):
        return m.num_heads
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _example_inputs(model, ctx, batches):
    """One input batch for tracing, on the model's device."""
    if ctx.example_inputs is not None:
        return to_device(ctx.example_inputs, module_device(model))
    if batches:
        return to_device(batches[0][0], module_device(model))
    raise ValueError("structured pruning traces the model: pass calibration data or example_inputs to prune_")


def _activations(model, graph, units, heads, batches):
    """Mean |activation| of every producer of ``units`` and of every head input."""
    points = {n: activation_point(graph, m) for u in units for n, m in u.producers}
    inputs_of = {h.name: h.module.out_proj for h in heads}
    return mean_abs_activations(model, batches, points, inputs_of)


def _output_taylor(model, graph, units, heads, batches, loss_fn):
    """Mean |∂L/∂mask| of every producer's output of ``units`` (where it is active: after its BatchNorm) and of
    every head's output."""
    points = {}
    for unit in units:
        for name, module in unit.producers:
            hook, _act, dim = activation_point(graph, module)  # relu/gelu/silu/tanh(0) = 0: masking before it removes the unit
            points[name] = (hook, dim)
    return output_taylor(model, batches, loss_fn, points, {h.name: (h.module.out_proj, h.module.num_heads)
                                                          for h in heads})


def prune_structured_(model: nn.Module, config: StructuredConfig, ctx) -> PruneReport:
    """Handler of :class:`StructuredConfig` for :func:`torchslim.prune.prune_`."""
    # names are checked before the model changes; the converted attention keeps its name and out_proj child
    selector = LayerSelector(model, config.sparsity, config.ignore, config.overrides)
    convert_attention_(model)  # heads become removable without touching d_model
    batches = take_batches(ctx.calibration, config.calibration.batches)
    if config.importance in ("activation", "taylor", "output_taylor") and not batches:
        raise ValueError(f"importance {config.importance!r} needs calibration data: pass calibration= to prune_")
    if config.reconstruct and not batches:
        raise ValueError("reconstruct needs calibration data: pass calibration= to prune_")
    example = _example_inputs(model, ctx, batches)
    layers = weight_layers(model)
    before, size_before, tracker = snapshot(layers), model_size(model), _Tracker(layers)
    original: dict[str, int] = {}
    refit: dict[str, None] = {}  # every step's refit layers, in order, once
    untraced: list[str] = []
    refused: dict[str, str] = {}  # units whose cut the forward cannot follow -> why
    reaching_tied: dict[str, list[str]] = {}  # units whose channels reach a tied weight -> the layers holding it
    reaching_recurrent: dict[str, list[str]] = {}  # units whose channels feed or leave a recurrent layer -> it
    blocked: dict[str, None] = {}  # units whose cut was rounded to whole blocks of channels

    def step_fn(step: int, steps: int) -> None:
        graph = build_graph(model, example)
        units = channel_units(model, graph, selector, untraced, reaching_tied, reaching_recurrent)
        heads = head_units(model, selector)
        acts = _activations(model, graph, units, heads, batches) if config.importance == "activation" else {}
        if config.importance == "output_taylor":
            acts = _output_taylor(model, graph, units, heads, batches, ctx.loss_fn)
        if config.importance == "taylor":
            accumulate_gradients(model, batches, ctx.loss_fn)
        if config.reconstruct:  # the model as this step found it: what the refit layers reproduce
            reference, kept_before = copy.deepcopy(model), {n: list(k) for n, k in tracker.kept.items()}
        cuts = []  # decide every cut before making any: scores see one consistent model
        for unit in units + heads:
            sets = unit.size if isinstance(unit, HeadUnit) else unit.sets  # what one cut removes: a head, a set
            n0 = original.setdefault(unit.name, sets)
            removed = count(sparsity_at(selector.sparsity_for(unit.name), step, steps), n0)
            if removed >= n0:
                raise ConfigError(selector.field_for(unit.name), f"would remove every unit of {unit.name!r} "
                                                                 f"({n0}); lower it or ignore the layer")
            k = sets - (n0 - removed)
            groups = 1 if isinstance(unit, HeadUnit) else unit.channel_groups
            whole = 1 if isinstance(unit, HeadUnit) else unit.cut_step(n0)
            if k % whole and whole > groups:
                blocked.setdefault(unit.name)
            k -= k % whole
            if k <= 0:
                continue
            if isinstance(unit, HeadUnit):
                cuts.append((unit, _lowest(head_scores(config.importance, unit.module, acts.get(unit.name)), k)))
            else:
                scores = unit.per_set(channel_scores(config.importance, unit, acts))
                cuts.append((unit, unit.channels_of(_lowest(scores, k, groups))))
        cuts = _without_refused(model, example, cuts, selector, refused)
        for unit, idxs in cuts:
            if isinstance(unit, HeadUnit):
                prune_heads_(unit.module, idxs)
                tracker.remove(unit.name, idxs)
            else:
                for name, gone in prune_channels(graph, unit, idxs).items():
                    tracker.remove(name, gone)
        model.zero_grad(set_to_none=True)
        if config.reconstruct:
            refit.update(dict.fromkeys(reconstruct_(model, reference, batches, tracker.positions(kept_before))))

    ctx.run_schedule(model, config, step_fn, lambda: None)
    report = build_report("structured", list(layers), before, weight_layers(model), size_before, model,
                          tracker.removed, refit=refit)
    report.notes += (untraced_note(untraced) + refused_note(refused) + tied_note(reaching_tied)
                     + recurrent_note(reaching_recurrent) + blocked_note(blocked))
    return report


def _whole_steps(below: torch.Tensor, score: torch.Tensor, unit: ChannelUnit, step: int) -> list[int]:
    """Of the channels ``below`` the threshold, the lowest-scored whole number of cut steps of ``step`` channels
    (the same positions in each conv group)."""
    g = unit.channel_groups
    if len(below) % step == 0:
        return below.tolist()
    per = unit.size // g  # positions in one group
    positions = below[below < per]
    n = len(positions) - len(positions) % (step // g)
    kept = positions[torch.argsort(score.view(g, -1).sum(0)[positions], stable=True)[:n]]
    return sorted(grp * per + int(q) for grp in range(g) for q in kept)


def _forward_error(model: nn.Module, example) -> str | None:
    """Why ``model`` no longer runs on ``example`` (eval mode, no gradients), or None when it does."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(*example) if isinstance(example, tuple) else model.eval()(example)
    except Exception as exc:  # noqa: BLE001  (whatever the user's forward raises)
        return f"{type(exc).__name__}: {exc}"
    finally:
        model.train(was_training)
    return None


def _without_refused(model, example, cuts, selector, refused: dict[str, str]) -> list:
    """``cuts`` less those after which the model no longer runs, found by making them in order on a copy of the
    model: a forward that fixes a width (a reshape to ``self.heads`` × ``D // self.heads``, ``torch.split(h, 16)``)
    cannot follow a cut of the channels it reads, so those channels are kept whole. Adds each refused unit, with
    the error, to ``refused``."""
    done, pending = [], [(u.name, idxs) for u, idxs in cuts if isinstance(u, ChannelUnit) and u.name not in refused]
    while pending:
        trial = copy.deepcopy(model)
        graph = build_graph(trial, example)
        units = {u.name: u for u in channel_units(trial, graph, selector)}
        for name, idxs in done:  # a fresh copy after a refusal: the cuts kept so far first
            prune_channels(graph, units[name], idxs)
        for i, (name, idxs) in enumerate(pending):
            prune_channels(graph, units[name], idxs)
            error = _forward_error(trial, example)
            if error:  # the copy is broken now: the rest go on a fresh one
                refused[name], pending = error, pending[i + 1:]
                break
            done.append((name, idxs))
        else:
            pending = []
    return [(u, idxs) for u, idxs in cuts if u.name not in refused]


def refused_note(refused: dict[str, str]) -> tuple[str, ...]:
    """What to say once about units kept whole because the model's forward cannot follow their cut."""
    if not refused:
        return ()
    first = next(iter(refused.values()))
    return (f"kept whole: {', '.join(refused)} (the model no longer runs once their channels are removed: "
            f"{first}; its forward fixes their number)",)


def blocked_note(blocked: dict[str, None]) -> tuple[str, ...]:
    """What to say once about cuts rounded to whole blocks of channels."""
    if not blocked:
        return ()
    return (f"removed in whole blocks of {CONV_BLOCK} channels (2-D convolutions run on blocks of channels; a "
            f"count off them is several times slower in ONNX Runtime): {', '.join(blocked)}",)


def tied_note(reaching_tied: dict[str, list[str]]) -> tuple[str, ...]:
    """What to say once about layers kept whole because their channels reach a tied weight."""
    return _reaching_note(reaching_tied, "their channels reach {}, whose weight is tied to another layer's: cutting "
                                         "them would untie it")


def recurrent_note(reaching_recurrent: dict[str, list[str]]) -> tuple[str, ...]:
    """What to say once about layers kept whole because their channels feed or leave a recurrent layer."""
    return _reaching_note(reaching_recurrent, "their channels feed or leave {}, a recurrent layer, whose widths are "
                                              "not cut")


def _reaching_note(reaching: dict[str, list[str]], why: str) -> tuple[str, ...]:
    """``kept whole: LAYERS (WHY)``, ``why`` naming the layers they reach in its ``{}``; nothing when none."""
    if not reaching:
        return ()
    reached = sorted({n for names in reaching.values() for n in names})
    return (f"kept whole: {', '.join(reaching)} ({why.format(', '.join(reached))})",)


def untraced_note(untraced: list[str]) -> tuple[str, ...]:
    """What to say once about layers whose channels could not be traced as one coupled set."""
    if not untraced:
        return ()
    return (f"kept whole: {', '.join(untraced)} (their channels could not be traced as one coupled set through "
            f"the model's graph, so cutting them could break it)",)


def prune_activation_(model: nn.Module, config: ActivationConfig, ctx) -> PruneReport:
    """Handler of :class:`ActivationConfig` for :func:`torchslim.prune.prune_`.

    A unit's activation is its mean |output| over the calibration batches, taken after the layer's BatchNorm and
    nonlinearity when they follow it (a ReLU unit that never fires scores 0), divided by the layer's largest.
    Channels coupled across layers (residual adds) are removed only if below ``threshold`` in every producer.
    Attention heads are not units of this method (use StructuredConfig with ``importance: activation``).
    """
    selector = LayerSelector(model, 0.0, config.ignore)
    batches = take_batches(ctx.calibration, config.calibration.batches)
    if not batches:
        raise ValueError("activation pruning needs calibration data: pass calibration= to prune_")
    example = _example_inputs(model, ctx, batches)
    layers = weight_layers(model)
    before, size_before, tracker = snapshot(layers), model_size(model), _Tracker(layers)

    lowest: list[tuple[float, str]] = []  # each unit's lowest score: what the threshold was compared with
    original: dict[str, int] = {}  # each unit's channels before the first cut
    untraced: list[str] = []
    refused: dict[str, str] = {}
    reaching_tied: dict[str, list[str]] = {}
    reaching_recurrent: dict[str, list[str]] = {}
    blocked: dict[str, None] = {}  # units whose cut was rounded to whole blocks of channels

    def step_fn(step: int, steps: int) -> None:
        graph = build_graph(model, example)
        units = channel_units(model, graph, selector, untraced, reaching_tied, reaching_recurrent)
        acts = _activations(model, graph, units, [], batches)
        cuts = []
        for unit in units:
            # (sets,) in [0, 1]: a set of coupled channels goes only if every channel in it is below
            score = unit.per_set(producer_activation(unit, acts, normalise=True, reduce="max"), reduce="max")
            lowest.append((float(score.min()), unit.name))
            below = score < config.threshold
            if bool(below.all()):
                raise ConfigError("threshold", f"would remove every unit of {unit.name!r}; lower it or ignore "
                                               f"the layer")
            g = unit.channel_groups
            if g > 1:  # grouped conv: a position goes only if it is below in every group
                below = below.view(g, -1).all(0).repeat(g)
            idxs = torch.nonzero(below).flatten()
            block = unit.cut_step(original.setdefault(unit.name, unit.size))
            whole = _whole_steps(idxs, score, unit, block)
            if len(whole) < len(idxs) and block > g:
                blocked.setdefault(unit.name)
            idxs = unit.channels_of(whole)
            if idxs:
                cuts.append((unit, idxs))
        cuts = _without_refused(model, example, cuts, selector, refused)
        for unit, idxs in cuts:
            for name, gone in prune_channels(graph, unit, idxs).items():
                tracker.remove(name, gone)

    ctx.run_schedule(model, config, step_fn, lambda: None)
    report = build_report("activation", list(layers), before, weight_layers(model), size_before, model,
                          tracker.removed)
    report.notes += (untraced_note(untraced) + refused_note(refused) + tied_note(reaching_tied)
                     + recurrent_note(reaching_recurrent) + blocked_note(blocked))
    if lowest and not any(tracker.removed.values()):  # say why, and what threshold would remove something
        value, name = min(lowest)
        report.notes += (f"nothing removed: no unit's normalised mean |activation| is below threshold "
                         f"{config.threshold:g} (the lowest: {value:.4g}, in {name})",)
    return report
