"""Pruning: ``prune_(model, config)`` with a MagnitudeConfig (unstructured, masked), ActivationConfig (remove
units that barely activate) or StructuredConfig (remove channels, neurons and attention heads)."""

from torchslim.prune.api import prune_, register_pruner
from torchslim.prune.attention import PrunableMultiheadAttention, convert_attention_
from torchslim.prune.config import (
    ActivationConfig,
    Calibration,
    Distill,
    Finetune,
    MagnitudeConfig,
    Schedule,
    StructuredConfig,
    config_from_mapping,
)
from torchslim.prune.masks import apply_masks_, mask_hook
from torchslim.prune.report import LayerReport, PruneReport
from torchslim.prune.resize import resize_to_state_dict_
from torchslim.prune.schedule import polynomial_schedule, sparsity_at, spread_epochs
from torchslim.prune.sensitivity import SensitivityTable, overrides_from_sensitivity, sensitivity

__all__ = [
    "ActivationConfig",
    "Calibration",
    "Distill",
    "Finetune",
    "LayerReport",
    "MagnitudeConfig",
    "PrunableMultiheadAttention",
    "PruneReport",
    "Schedule",
    "SensitivityTable",
    "StructuredConfig",
    "apply_masks_",
    "config_from_mapping",
    "convert_attention_",
    "mask_hook",
    "overrides_from_sensitivity",
    "polynomial_schedule",
    "prune_",
    "register_pruner",
    "resize_to_state_dict_",
    "sensitivity",
    "sparsity_at",
    "spread_epochs",
]
