"""Knowledge distillation: train a student on a teacher's soft outputs and intermediate features.

Example:
    >>> from torchslim.distill import KDConfig, distill
    >>> distill(student, teacher, train_set, KDConfig(temperature=4.0, alpha=0.9), fit=loop)  # doctest: +SKIP
"""

from torchslim.distill.api import FitFn, distill, register_handler
from torchslim.distill.config import FeatureMatch, KDConfig, Regularization, config_from_mapping
from torchslim.distill.features import FeatureRecorder, find_module, make_projection
from torchslim.distill.losses import FeatureKDLoss, KDLoss, RegularizationLoss
from torchslim.distill.objective import DistillationObjective, DistillLossFn, StudentWithExtras, make_loss_fn

__all__ = [
    "DistillLossFn",
    "DistillationObjective",
    "FeatureKDLoss",
    "FeatureMatch",
    "FeatureRecorder",
    "FitFn",
    "KDConfig",
    "KDLoss",
    "Regularization",
    "RegularizationLoss",
    "StudentWithExtras",
    "config_from_mapping",
    "distill",
    "find_module",
    "make_loss_fn",
    "make_projection",
    "register_handler",
]
