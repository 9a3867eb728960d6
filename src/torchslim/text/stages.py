"""The stages of a sentence-embedding recipe: each a validated config and the verb of its technique applied to
the run's student encoder (see :mod:`torchslim.text.run`).

    prune        structured pruning of attention heads and FFN neurons (the encoder physically shrinks)
    drop_layers  keep only the listed layers (a shallower student)
    distill      train the student to reproduce the fp32 model's embeddings on the unlabelled corpus
    quantize     compile for ONNX Runtime: export, transformer fusions, int8 (dynamic or static)
    export       also write ``model.onnx`` beside the artifact
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import pydantic

from torchslim._errors import ConfigError
from torchslim._validation import StrictModel
from torchslim.stages import StageHandler
from torchslim.text._int8 import Int8Config

if TYPE_CHECKING:
    from torchslim.text.run import TextRunContext

TEXT_STAGES: dict[str, StageHandler] = {}
Fraction = pydantic.confloat(ge=0.0, lt=1.0)


def _register(handler: StageHandler) -> StageHandler:
    TEXT_STAGES[handler.name] = handler
    return handler


def _params(encoder: Any) -> int:
    return sum(p.numel() for p in encoder.parameters())


# ---- prune -----------------------------------------------------------------------------------------------------

class TextPruneStage(StrictModel):
    """Fractions of attention heads and FFN neurons to remove (one number, or one per layer), scored on
    ``calibration_sentences`` of the training split by how far removing a unit moves the embedding."""

    heads: Union[Fraction, list[Fraction]] = 0.0
    ffn: Union[Fraction, list[Fraction]] = 0.0
    scope: Literal["layer", "global"] = "layer"
    min_heads: int = pydantic.Field(1, ge=1)
    ffn_multiple: int = pydantic.Field(1, ge=1)
    calibration_sentences: int = pydantic.Field(512, ge=2, le=1_000_000)


def _check_prune(ctx: "TextRunContext", cfg: TextPruneStage) -> None:
    depth = len(ctx.encoder.encoder.layer)
    for name in ("heads", "ffn"):
        value = getattr(cfg, name)
        if isinstance(value, list) and len(value) != depth:
            raise ConfigError(name, f"one fraction per layer: the encoder has {depth} layers, got {len(value)}")


def _run_prune(ctx: "TextRunContext", cfg: TextPruneStage) -> dict[str, Any]:
    from torchslim.text.shrink import PruneConfig, prune_encoder_

    config = PruneConfig(heads=cfg.heads, ffn=cfg.ffn, scope=cfg.scope, min_heads=cfg.min_heads,
                         ffn_multiple=cfg.ffn_multiple, seed=ctx.seed)
    record = prune_encoder_(ctx.encoder, config, ctx.splits.train[:cfg.calibration_sentences], ctx.tokenizer)
    ctx.log(f"pruned: heads {record.heads_before} -> {record.heads_after}, ffn {record.ffn_before} -> "
            f"{record.ffn_after}")
    return {"heads": record.heads_after, "ffn": record.ffn_after, "params_before": record.params_before,
            "params_after": record.params_after}


_register(StageHandler("prune", TextPruneStage, _run_prune, check=_check_prune))


# ---- drop_layers -----------------------------------------------------------------------------------------------

class DropLayersStage(StrictModel):
    """The layers to keep (0-based, in order), e.g. ``[0, 2, 4]``: every other layer of a 6-layer encoder."""

    keep: list[pydantic.NonNegativeInt] = pydantic.Field(min_length=1)


def _check_drop(ctx: "TextRunContext", cfg: DropLayersStage) -> None:
    depth = len(ctx.encoder.encoder.layer)
    if sorted(set(cfg.keep)) != list(cfg.keep):
        raise ConfigError("keep", f"layer indices in increasing order without repeats, got {cfg.keep}")
    if cfg.keep[-1] >= depth:
        raise ConfigError("keep", f"the encoder has layers 0..{depth - 1}, got {cfg.keep[-1]}")
    from torchslim.text.shrink import drop_layers_

    ctx.encoder = drop_layers_(ctx.encoder, list(cfg.keep))  # (a copy) later checks see the shallower encoder


def _run_drop(ctx: "TextRunContext", cfg: DropLayersStage) -> dict[str, Any]:
    from torchslim.text.shrink import drop_layers_

    before = len(ctx.encoder.encoder.layer)
    params = _params(ctx.encoder)
    ctx.encoder = drop_layers_(ctx.encoder, list(cfg.keep))
    return {"layers_before": before, "layers_after": len(cfg.keep), "kept": list(cfg.keep),
            "params_before": params, "params_after": _params(ctx.encoder)}


_register(StageHandler("drop_layers", DropLayersStage, _run_drop, check=_check_drop))


# ---- distill ---------------------------------------------------------------------------------------------------

class TextDistillStage(StrictModel):
    """Distillation from the fp32 model on the training sentences (the teacher's outputs are computed once).

    Losses on the pooled embedding (``cosine``: 1 - cos, ``mse``) and on hidden states (``hidden``: student layer
    i against teacher layer ``layer_map[i]``, 1-based, 0 = embedding output).
    """

    epochs: int = pydantic.Field(4, ge=1, le=10_000)
    batch_size: int = pydantic.Field(32, ge=1, le=65_536)
    lr: float = pydantic.Field(2e-4, gt=0, lt=1)
    weight_decay: float = pydantic.Field(0.01, ge=0)
    warmup: float = pydantic.Field(0.1, ge=0, lt=1)
    schedule: Literal["linear", "cosine"] = "linear"
    max_length: int = pydantic.Field(64, ge=2, le=100_000)
    cosine: float = pydantic.Field(1.0, ge=0)
    mse: float = pydantic.Field(0.0, ge=0)
    hidden: float = pydantic.Field(0.0, ge=0)
    hidden_tokens: bool = False
    layer_map: Optional[list[pydantic.NonNegativeInt]] = None
    freeze_word_embeddings: bool = True
    patience: int = pydantic.Field(2, ge=0)
    sentences: Optional[int] = pydantic.Field(None, ge=2, description="use at most this many training sentences")
    extra_text: Optional[str] = pydantic.Field(
        None, pattern=r"^text:.+", description="text:FILE (relative to the recipe), more unlabelled sentences to "
                                               "train on; never validated or measured on")

    @pydantic.model_validator(mode="after")
    def _some_loss(self) -> "TextDistillStage":
        if self.cosine + self.mse + self.hidden <= 0:
            raise ValueError("at least one of cosine, mse, hidden must be > 0")
        return self


def _extra_sentences(ctx: "TextRunContext", cfg: TextDistillStage) -> tuple[list[str], int]:
    """The extra text's sentences, without those of the domain's validation and test splits (which are held out:
    training on them would inflate the figures measured there), and how many were left out."""
    from torchslim.text.data import read_sentences, text_source_path

    if cfg.extra_text is None:
        return [], 0
    held_out = set(ctx.splits.val) | set(ctx.splits.test)
    found = read_sentences(text_source_path(cfg.extra_text, ctx.recipe.base_dir, "extra_text"), field="extra_text")
    kept = [s for s in found if s not in held_out]
    return kept, len(found) - len(kept)


def _check_distill(ctx: "TextRunContext", cfg: TextDistillStage) -> None:
    _extra_sentences(ctx, cfg)
    if cfg.layer_map is not None:
        depth = len(ctx.encoder.encoder.layer)
        teacher_depth = len(ctx.teacher.encoder.encoder.layer)
        if len(cfg.layer_map) != depth or max(cfg.layer_map) > teacher_depth:
            raise ConfigError("layer_map", f"one teacher layer in 0..{teacher_depth} per student layer "
                                           f"({depth}), got {cfg.layer_map}")


def _run_distill(ctx: "TextRunContext", cfg: TextDistillStage) -> dict[str, Any]:
    from torchslim.text.distill import DistillConfig, distill_encoder

    fields = cfg.model_dump(exclude={"sentences", "layer_map", "extra_text"})
    config = DistillConfig(**fields, layer_map=tuple(cfg.layer_map) if cfg.layer_map is not None else None,
                           seed=ctx.seed)
    sentences = ctx.splits.train[:cfg.sentences] if cfg.sentences else ctx.splits.train
    extra, left_out = _extra_sentences(ctx, cfg)
    if cfg.extra_text is not None:
        ctx.log(f"distill: {len(extra):,} extra sentences from {cfg.extra_text}"
                + (f" ({left_out:,} left out: they are in the validation or test split)" if left_out else ""))
    result = distill_encoder(ctx.encoder, ctx.teacher.encoder, sentences, ctx.tokenizer, config,
                             extra_sentences=extra)
    last = result.history[-1] if result.history else {}
    return {"sentences": len(sentences), "extra_sentences": len(extra), "trained_on": result.train_sentences,
            "epochs_run": len(result.history), "best_epoch": result.best_epoch, "val_cosine": last.get("val_cosine"),
            "seconds": round(result.seconds, 1), "history": result.history}


_register(StageHandler("distill", TextDistillStage, _run_distill, check=_check_distill))


# ---- quantize --------------------------------------------------------------------------------------------------



class TextQuantizeStage(Int8Config):
    """Compile the encoder for ONNX Runtime: export, ORT's transformer fusions (``fuse``), then int8 as
    :class:`~torchslim.text.onnx.Int8Config` says, calibrated on ``calibration_sentences`` of the training split;
    ``method: none`` keeps the (fused) graph in fp32. A fused graph then computes on real tokens only
    (:mod:`torchslim.text.token_packing`)."""

    method: Literal["dynamic", "static", "none"] = "dynamic"
    fuse: bool = True
    calibration_sentences: int = pydantic.Field(256, ge=1, le=100_000)

    @pydantic.model_validator(mode="after")
    def _keys_of_the_method(self) -> "TextQuantizeStage":
        """A key another method reads would be ignored without a word: refused, naming it."""
        only = {"static": STATIC_ONLY, "dynamic": DYNAMIC_ONLY}
        given = self.model_fields_set - {"method", "fuse"}
        for key in sorted(given):
            owner = next((m for m, keys in only.items() if key in keys), None)
            if self.method == "none" or (owner is not None and owner != self.method):
                raise ConfigError(key, f"does not apply to method {self.method}" + (
                    f" (only to {owner})" if owner is not None else " (nothing is quantized)"))
        return self


STATIC_ONLY = frozenset({"calibrate", "percentile", "moving_average", "symmetric_activations"})
DYNAMIC_ONLY = frozenset({"attention"})  # ORT has no static QAttention


def _run_quantize(ctx: "TextRunContext", cfg: TextQuantizeStage) -> dict[str, Any]:
    from torchslim.text._initializers import onnx_weight_map
    from torchslim.text.onnx import export_onnx, fuse, fused_op_counts, quantize_int8
    from torchslim.text.token_packing import pack_tokens

    graph = export_onnx(ctx.encoder)
    if cfg.fuse:
        graph = fuse(graph, ctx.encoder)
    ctx.onnx_weight_map = onnx_weight_map(graph, ctx.encoder)
    record: dict[str, Any] = {"method": cfg.method, "fused": cfg.fuse}
    kind = ["fused" if cfg.fuse else "unfused"]
    if cfg.method != "none":
        sentences = ctx.splits.train[:cfg.calibration_sentences]
        calibration = [ctx.tokenizer(sentences[i:i + 32]) for i in range(0, len(sentences), 32)]
        report: dict[str, Any] = {}
        graph = quantize_int8(graph, Int8Config(**cfg.model_dump(exclude={"fuse", "calibration_sentences"})),
                              calibration, report=report)
        record.update(kept_fp32=report.get("kept_fp32", list(cfg.keep_fp32)),
                      calibration_cosine=report.get("cosine"))
        kind.insert(0, f"int8 {cfg.method}{' per-channel' if cfg.per_channel else ''}")
    graph, record["packed_layers"] = pack_tokens(graph)  # padding computed only in attention's core
    if record["packed_layers"]:
        kind.append("real tokens only")
    record["ops"] = fused_op_counts(graph)
    ctx.onnx, ctx.onnx_kind = graph, ", ".join(kind)
    return record


_register(StageHandler("quantize", TextQuantizeStage, _run_quantize))


# ---- export ----------------------------------------------------------------------------------------------------

class TextExportStage(StrictModel):
    """Extra files beside the artifact: ``onnx`` writes ``model.onnx`` (the graph ONNX Runtime runs)."""

    formats: list[Literal["onnx"]] = pydantic.Field(default_factory=lambda: ["onnx"], min_length=1)


def _run_export(ctx: "TextRunContext", cfg: TextExportStage) -> dict[str, Any]:
    ctx.formats = list(cfg.formats)
    return {"formats": list(cfg.formats)}


_register(StageHandler("export", TextExportStage, _run_export, compresses=False, changes_model=False))
