"""Stage registry: a stage is a validated config plus the function that applies its technique's verb.

Technique packages register their own stages; adding one touches no runner code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

import pydantic

from torchslim._errors import ConfigError
from torchslim._validation import MAX_LR, StrictModel, parse
from torchslim.train import AUGMENTATIONS

if TYPE_CHECKING:
    from torchslim.runner import RunContext


@dataclass(frozen=True)
class StageHandler:
    """How one recipe stage is validated, checked against the model and run.

    ``run`` returns a record for the report (what changed, with numbers). ``compresses`` marks stages before which
    the baseline is taken; ``changes_model`` False (export) spares the run measuring the model again after it.
    ``check`` sees a copy of the context before any stage runs (names exist, shapes fit); a stage that replaces
    the model sets the copy's ``model`` to the new one so later checks see it.
    """

    name: str
    config: type[StrictModel]
    run: Callable[["RunContext", Any], dict[str, Any]]
    compresses: bool = True
    changes_model: bool = True
    check: Optional[Callable[["RunContext", Any], None]] = None
    parser: Optional[Callable[..., Any]] = None
    # On --resume, called for each finished stage with its record, to restore what outlives the stage
    # (e.g. pruning masks that later training must keep).
    resume: Optional[Callable[["RunContext", Any, dict[str, Any]], None]] = None

    def parse(self, body: Any, *, prefix: str, source: str | None) -> Any:
        if self.parser is not None:
            return self.parser(body, prefix=prefix, source=source)
        return parse(self.config, body, prefix=prefix, source=source)


STAGES: dict[str, StageHandler] = {}


def register_stage(handler: StageHandler) -> StageHandler:
    STAGES[handler.name] = handler
    return handler


MAX_BATCH_SIZE = 2**31 - 1  # larger ones overflow the data loader's sampler
MAX_EPOCHS = 1_000_000


class TrainStage(StrictModel):
    """``- train: {epochs: 60, lr: 0.001, batch_size: 64}``"""

    epochs: int = pydantic.Field(gt=0, le=MAX_EPOCHS)
    lr: float = pydantic.Field(gt=0, le=MAX_LR)
    batch_size: int = pydantic.Field(64, gt=0, le=MAX_BATCH_SIZE)
    weight_decay: float = pydantic.Field(0.0, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    schedule: Literal["cosine", "constant"] = "cosine"
    augment: Literal[AUGMENTATIONS] = "none"  # the training loop's: none | shift | mixup | shift+mixup


def _run_train(ctx: "RunContext", cfg: TrainStage) -> dict[str, Any]:
    from torchslim.train import TrainConfig

    if ctx.domain.model.weights is not None:
        ctx.log(f"train: skipped, the domain names trained weights ({ctx.domain.model.weights})")
        return {"skipped": True, "reason": "domain names trained weights"}
    try:
        result = ctx.fit(ctx.model, TrainConfig(**cfg.model_dump()), desc="train")
    except ConfigError as exc:  # e.g. the loss diverged: the message names this stage's lr
        raise exc.within(f"stages[{ctx.stage_index}].train", ctx.recipe.source) from None
    return {"epochs": cfg.epochs, "best_epoch": result.best_epoch, "val_metric": result.best_val}


register_stage(StageHandler("train", TrainStage, _run_train, compresses=False))


def _load_technique_stages() -> None:
    """Technique packages register their stages on import."""
    import importlib

    for module in ("torchslim.prune.stage", "torchslim.quantize.stage", "torchslim.distill.stage",
                   "torchslim.export.stage"):
        importlib.import_module(module)


_load_technique_stages()
