"""Make a :class:`SentenceEncoder` physically smaller: remove attention heads, FFN neurons or whole layers.

Three parts kept apart: *surgery* (``prune_heads_``, ``prune_ffn_``, ``drop_layers_`` slice the weights and change
the per-layer ``heads`` / ``ffn`` lists, so ``encoder.config`` rebuilds the new shapes), *importance*
(``unit_importance``: one score per head and per FFN neuron) and *selection* (``select_units``: a pure function from
scores and a :class:`PruneConfig` to the units to keep). ``prune_encoder_`` runs the three in order.

Importance, why this one: the mask-gradient method of Michel et al. (2019) puts a gate ``m`` of value 1 on every
head's context and every neuron's activation and reads ``dL/dm`` -- the first-order change of ``L`` when the unit is
removed (``m: 1 -> 0``). With no labels, the natural ``L`` (cosine to the unpruned model's embedding) is at its
minimum and its gradient is zero, so instead we score a unit by how far removing it moves the embedding, to first
order: ``||J_u||^2`` where ``J_u = d embedding / d m_u`` (one 384-vector per sentence). A random probe ``r`` gives
``E[(r . J_u)^2] = ||J_u||^2`` with one backward pass, so the score is the mean over sentences and probes of
``(d (r . e) / d m_u)^2`` -- a Fisher-style estimate of the embedding change, computed for every unit at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim.text.distill import pad_rows, tokenize_all
from torchslim.text.encoder import SentenceEncoder

__all__ = ["PruneConfig", "PruneRecord", "drop_layers_", "prune_encoder_", "prune_ffn_", "prune_heads_",
           "select_units", "unit_importance"]

Fraction = Union[float, Sequence[float]]


# ----------------------------------------------------------------------------------------------------- surgery

def _slice_linear(linear: nn.Linear, rows: Optional[torch.Tensor] = None, cols: Optional[torch.Tensor] = None
                  ) -> nn.Linear:
    """A new Linear holding the chosen output rows (and bias entries) and input columns of ``linear``."""
    w = linear.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    return out


def prune_heads_(encoder: SentenceEncoder, layer: int, keep: Sequence[int]) -> None:
    """Keep only the attention heads ``keep`` (current indices) of ``layer``: query/key/value lose those heads'
    output rows, ``attention.output.dense`` the matching input columns."""
    attn = encoder.encoder.layer[layer].attention
    d = attn.self.head_dim
    keep = sorted(set(int(h) for h in keep))
    if not keep or keep[0] < 0 or keep[-1] >= attn.self.heads:
        raise ConfigError("keep", f"layer {layer}: heads to keep must be 1..{attn.self.heads} indices "
                                  f"in [0, {attn.self.heads}), got {keep}")
    idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep]).to(attn.self.query.weight.device)
    for name in ("query", "key", "value"):
        setattr(attn.self, name, _slice_linear(getattr(attn.self, name), rows=idx))
    attn.output.dense = _slice_linear(attn.output.dense, cols=idx)
    attn.self.heads = len(keep)


def prune_ffn_(encoder: SentenceEncoder, layer: int, keep: Sequence[int]) -> None:
    """Keep only the FFN neurons ``keep`` of ``layer``: ``intermediate.dense`` rows + bias, ``output.dense``
    columns."""
    lay = encoder.encoder.layer[layer]
    width = lay.intermediate.dense.out_features
    keep = sorted(set(int(n) for n in keep))
    if not keep or keep[0] < 0 or keep[-1] >= width:
        raise ConfigError("keep", f"layer {layer}: FFN neurons to keep must be 1..{width} indices in [0, {width})")
    idx = torch.tensor(keep, device=lay.intermediate.dense.weight.device)
    lay.intermediate.dense = _slice_linear(lay.intermediate.dense, rows=idx)
    lay.output.dense = _slice_linear(lay.output.dense, cols=idx)


def drop_layers_(encoder: SentenceEncoder, keep: Sequence[int]) -> SentenceEncoder:
    """Keep only the transformer layers ``keep`` (e.g. ``[0, 2, 4]``: every other layer of six), in their order.

    The kept layers keep their weights: a student made this way starts from the teacher, which is why
    distillation then recovers most of the gap quickly.
    """
    depth = len(encoder.encoder.layer)
    try:
        keep = [int(i) for i in keep]
    except (TypeError, ValueError):
        raise ConfigError("keep", f"layer indices must be integers, got {keep!r}") from None
    if not keep or len(set(keep)) != len(keep) or min(keep) < 0 or max(keep) >= depth:
        raise ConfigError("keep", f"layers to keep must be distinct indices in [0, {depth}) (at least one), "
                                  f"got {keep}")
    encoder.encoder.layer = nn.ModuleList(encoder.encoder.layer[i] for i in sorted(keep))
    return encoder


# ------------------------------------------------------------------------------------------------------ config

@dataclass(frozen=True)
class PruneConfig:
    """What structured pruning removes.

    Args:
        heads: fraction of attention heads to remove; one number, or one per layer.
        ffn: fraction of FFN neurons to remove; one number, or one per layer.
        scope: ``"layer"`` removes the fraction from every layer; ``"global"`` ranks the units of all layers
            together (scores normalised per layer, as Michel et al. do), so unimportant layers lose more.
            A per-layer list always means ``"layer"``.
        min_heads, min_ffn: floor per layer (a layer keeps at least one head: it has no zero-head form).
        ffn_multiple: round each layer's kept FFN width down to a multiple of this (int8 kernels like 8, 16).
        probes: random probes per calibration batch (more = less noisy scores).
        batch_size, max_length: calibration batches (sentences, tokens).
        seed: the probes' seed.
    """

    heads: Fraction = 0.0
    ffn: Fraction = 0.0
    scope: str = "layer"
    min_heads: int = 1
    min_ffn: int = 1
    ffn_multiple: int = 1
    probes: int = 2
    batch_size: int = 32
    max_length: int = 128
    seed: int = 0

    def __post_init__(self):
        for name in ("heads", "ffn"):
            value = getattr(self, name)
            values = [value] if isinstance(value, (int, float)) else list(value)
            if not values or any(not isinstance(v, (int, float)) or not 0.0 <= v < 1.0 for v in values):
                raise ConfigError(name, f"a fraction in [0, 1) or a list of them, got {value!r}")
        if self.scope not in ("layer", "global"):
            raise ConfigError("scope", f"'layer' or 'global', got {self.scope!r}")
        for name in ("min_heads", "min_ffn", "ffn_multiple", "probes", "batch_size", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(name, f"an integer >= 1, got {getattr(self, name)!r}")

    def per_layer(self, name: str, depth: int) -> Optional[list[float]]:
        value = getattr(self, name)
        if isinstance(value, (int, float)):
            return None
        if len(value) != depth:
            raise ConfigError(name, f"one fraction per layer: {depth} expected, got {len(value)}")
        return [float(v) for v in value]


@dataclass
class PruneRecord:
    """What ``prune_encoder_`` removed, in the encoder's indices before pruning."""

    heads_before: list[int]
    heads_after: list[int]
    ffn_before: list[int]
    ffn_after: list[int]
    removed_heads: list[list[int]] = field(default_factory=list)
    removed_ffn: list[list[int]] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# -------------------------------------------------------------------------------------------------- importance

def _gated(encoder: SentenceEncoder, head_gates: list[torch.Tensor], ffn_gates: list[torch.Tensor]):
    """Forward hooks multiplying each head's context by ``head_gates[l]`` (N, heads) and each FFN activation by
    ``ffn_gates[l]`` (N, ffn). Returns the hook handles."""
    handles = []
    for lay, hg, fg in zip(encoder.encoder.layer, head_gates, ffn_gates):
        sa = lay.attention.self

        def head_hook(mod, args, out, hg=hg, sa=sa):  # out (N, T, heads*d)
            n, t, _ = out.shape
            return (out.view(n, t, sa.heads, sa.head_dim) * hg[:n, None, :, None]).view(n, t, -1)

        def ffn_hook(mod, args, out, fg=fg):  # out (N, T, ffn), after GELU
            return out * fg[:out.shape[0], None, :]

        handles.append(sa.register_forward_hook(head_hook))
        handles.append(lay.intermediate.register_forward_hook(ffn_hook))
    return handles


def unit_importance(encoder: SentenceEncoder, sentences: Sequence[str], tokenizer, *, batch_size: int = 32,
                    max_length: int = 128, probes: int = 2, seed: int = 0
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Score every attention head and FFN neuron: the mean over sentences of ``||d embedding / d gate||^2``.

    Returns:
        ``(heads, ffn)``: per layer, a (heads,) and a (ffn,) tensor of scores (zero for a unit whose output is
        always zero).
    """
    if len(sentences) == 0:
        raise ConfigError("sentences", "calibration needs at least one sentence")
    device = next(encoder.parameters()).device
    layers = encoder.encoder.layer
    head_scores = [torch.zeros(l.attention.self.heads, device=device) for l in layers]
    ffn_scores = [torch.zeros(l.intermediate.dense.out_features, device=device) for l in layers]
    gen = torch.Generator().manual_seed(seed)
    was_training = encoder.training
    encoder.eval()
    requires = [p.requires_grad for p in encoder.parameters()]
    for p in encoder.parameters():
        p.requires_grad_(False)  # only the gates need gradients
    try:
        ids_all = tokenize_all(sentences, tokenizer, max_length)
        for start in range(0, len(ids_all), batch_size):
            ids, mask = pad_rows(ids_all[start:start + batch_size], device)
            n = ids.shape[0]
            hg = [torch.ones(n, l.attention.self.heads, device=device, requires_grad=True) for l in layers]
            fg = [torch.ones(n, l.intermediate.dense.out_features, device=device, requires_grad=True) for l in layers]
            handles = _gated(encoder, hg, fg)
            try:
                emb = encoder(ids, mask)  # (N, H)
            finally:
                for h in handles:
                    h.remove()
            for k in range(probes):
                r = torch.randn(emb.shape, generator=gen).to(device)
                grads = torch.autograd.grad((emb * r).sum(), hg + fg, retain_graph=k + 1 < probes)
                # per-sentence gates: the gradient row n is sentence n's own (r_n . J_n,u), squared before summing
                for acc, g in zip(head_scores + ffn_scores, grads):
                    acc += g.pow(2).sum(0)
    finally:
        for p, r in zip(encoder.parameters(), requires):
            p.requires_grad_(r)
        encoder.train(was_training)
    total = len(sentences) * probes
    return [s / total for s in head_scores], [s / total for s in ffn_scores]


# --------------------------------------------------------------------------------------------------- selection

def select_units(scores: list[torch.Tensor], fraction: Union[float, list[float]], scope: str, minimum: int,
                 multiple: int = 1) -> list[list[int]]:
    """Which units each layer keeps: the highest-scoring ones, ``fraction`` of them removed (pure function).

    ``fraction`` is one number (``scope`` says per layer or across layers) or one per layer. Ties keep the lower
    index, so equal scores give the same choice every run.
    """
    sizes = [len(s) for s in scores]
    if isinstance(fraction, list):
        counts = [max(minimum, n - int(round(f * n))) for f, n in zip(fraction, sizes)]
    elif scope == "layer":
        counts = [max(minimum, n - int(round(fraction * n))) for n in sizes]
    else:
        # Rank all units together after dividing each layer's scores by their mean (Michel et al. normalise per
        # layer: raw scales differ by layer depth), then keep at least ``minimum`` per layer.
        normed = [s / s.mean().clamp(min=1e-30) for s in scores]
        flat = torch.cat(normed)
        layer_of = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        remove = int(round(fraction * len(flat)))
        order = torch.argsort(flat, stable=True)  # lowest first
        counts = list(sizes)
        for j in order.tolist():
            if remove == 0:
                break
            layer = int(layer_of[j])
            if counts[layer] > minimum:
                counts[layer] -= 1
                remove -= 1
    if multiple > 1:
        counts = [max(minimum, min(n, max(multiple, c // multiple * multiple))) for c, n in zip(counts, sizes)]
    keep = []
    for s, c in zip(scores, counts):
        order = torch.argsort(-s, stable=True)  # highest first, ties to the lower index
        keep.append(sorted(order[:c].tolist()))
    return keep


def prune_encoder_(encoder: SentenceEncoder, config: PruneConfig, sentences: Sequence[str], tokenizer
                   ) -> PruneRecord:
    """Remove the least important attention heads and FFN neurons of ``encoder`` (in place), scored on
    ``sentences`` (a few hundred unlabelled sentences suffice).

    Example::

        record = prune_encoder_(model.encoder, PruneConfig(heads=0.25, ffn=0.5), sentences, tokenizer)
        record.heads_after, record.ffn_after   # e.g. [9, 9, 9, 9, 9, 9], [768, 768, ...]

    Returns:
        a :class:`PruneRecord`: shapes before and after, the removed units' indices, parameter counts.
    """
    if not isinstance(config, PruneConfig):
        raise ConfigError("config", f"a PruneConfig, got {type(config).__name__}")
    layers = encoder.encoder.layer
    depth = len(layers)
    head_frac = config.per_layer("heads", depth)
    ffn_frac = config.per_layer("ffn", depth)
    before = encoder.config
    record = PruneRecord(heads_before=list(before["heads"]), heads_after=list(before["heads"]),
                         ffn_before=list(before["ffn"]), ffn_after=list(before["ffn"]),
                         params_before=sum(p.numel() for p in encoder.parameters()))
    head_scores, ffn_scores = unit_importance(encoder, sentences, tokenizer, batch_size=config.batch_size,
                                              max_length=config.max_length, probes=config.probes, seed=config.seed)
    keep_heads = select_units(head_scores, head_frac if head_frac is not None else float(config.heads),
                              config.scope, config.min_heads)
    keep_ffn = select_units(ffn_scores, ffn_frac if ffn_frac is not None else float(config.ffn), config.scope,
                            config.min_ffn, config.ffn_multiple)
    for i in range(depth):
        if len(keep_heads[i]) < record.heads_before[i]:
            prune_heads_(encoder, i, keep_heads[i])
        if len(keep_ffn[i]) < record.ffn_before[i]:
            prune_ffn_(encoder, i, keep_ffn[i])
    after = encoder.config
    record.heads_after, record.ffn_after = list(after["heads"]), list(after["ffn"])
    record.removed_heads = [sorted(set(range(n)) - set(k)) for n, k in zip(record.heads_before, keep_heads)]
    record.removed_ffn = [sorted(set(range(n)) - set(k)) for n, k in zip(record.ffn_before, keep_ffn)]
    record.params_after = sum(p.numel() for p in encoder.parameters())
    return record
