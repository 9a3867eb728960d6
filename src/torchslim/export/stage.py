"""The ``export`` recipe stage: ``- export: {formats: [torchslim, onnx]}``.

The stage only records the request; the runner writes the files from the final artifact as reloaded from disk
(``--out DIR/artifact`` always, ``DIR/model.onnx`` for ``onnx``), wherever the stage stands in the recipe, so
an exported file is exactly what was measured. See :func:`torchslim.export.artifact.artifact_onnx`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import pydantic

from torchslim._validation import StrictModel
from torchslim.stages import StageHandler, register_stage

if TYPE_CHECKING:
    from torchslim.runner import RunContext

ONNX_FILE = "model.onnx"


class ExportStage(StrictModel):
    """``formats``: ``torchslim`` (the artifact folder, always written) and/or ``onnx``."""

    formats: tuple[Literal["torchslim", "onnx"], ...] = pydantic.Field(("torchslim",), min_length=1)

    @pydantic.field_validator("formats")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a format twice")
        return value


def requested_formats(records: list[dict[str, Any]]) -> set[str]:
    """Every format the run's export stages asked for (read by the runner after the artifact is saved)."""
    return {f for r in records if r.get("stage") == "export" for f in r.get("formats", ())}


def _check_export(ctx: "RunContext", cfg: ExportStage) -> None:
    """Before any training: a model asked for in ONNX can be exported."""
    if "onnx" in cfg.formats:
        from torchslim.export.onnx_export import check_exportable

        check_exportable(ctx.model, "formats", "onnx is the model's ONNX export", "leave onnx out")


def _run_export(ctx: "RunContext", cfg: ExportStage) -> dict[str, Any]:
    files = ["artifact"] + ([ONNX_FILE] if "onnx" in cfg.formats else [])
    return {"formats": list(cfg.formats), "files": files}


register_stage(StageHandler("export", ExportStage, _run_export, compresses=False, changes_model=False,
                            check=_check_export))
