"""The stages of a sentence-embedding recipe: each a validated config and the verb of its technique applied to
the run's student encoder (see :mod:`torchslim.text.run`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import pydantic

from torchslim._validation import StrictModel
from torchslim.stages import StageHandler

if TYPE_CHECKING:
    from torchslim.text.run import TextRunContext

TEXT_STAGES: dict[str, StageHandler] = {}


def _register(handler: StageHandler) -> StageHandler:
    TEXT_STAGES[handler.name] = handler
    return handler


class TextExportStage(StrictModel):
    """Extra files beside the artifact: ``onnx`` writes ``model.onnx`` (the graph ONNX Runtime runs)."""

    formats: list[Literal["onnx"]] = pydantic.Field(default_factory=lambda: ["onnx"], min_length=1)


def _run_export(ctx: "TextRunContext", cfg: TextExportStage) -> dict[str, Any]:
    ctx.formats = list(cfg.formats)
    return {"formats": list(cfg.formats)}


_register(StageHandler("export", TextExportStage, _run_export, compresses=False, changes_model=False))
