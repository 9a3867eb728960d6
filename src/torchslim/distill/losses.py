"""Distillation loss terms, each a small module: soft targets, feature matching, weight penalty."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.distill.config import FeatureMatch, Regularization
from torchslim.distill.features import make_projection

__all__ = ["KDLoss", "FeatureKDLoss", "RegularizationLoss"]


class KDLoss(nn.Module):
    """Hinton soft-target loss: ``alpha * T**2 * KL(p_t || p_s) + (1 - alpha) * CE(y, z_s)``.

    p = softmax(z / T). The KL is averaged over the batch ("batchmean", the true KL per sample) and computed
    from log-probabilities on both sides for stability. T**2 keeps the soft-target gradients on the same scale
    as the cross-entropy's whatever T is. A term whose factor is 0 is not computed, so alpha = 0 is exactly
    cross-entropy and alpha = 1 never reads the labels.

    Args:
        temperature: T > 0.
        alpha: weight of the soft-target term, in [0, 1].
    """

    def __init__(self, temperature: float, alpha: float):
        super().__init__()
        self.temperature, self.alpha = float(temperature), float(alpha)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss for logits (N, K) and integer labels (N,); returns a scalar."""
        loss = student_logits.new_zeros(())
        if self.alpha > 0:
            t = self.temperature
            log_p_s = F.log_softmax(student_logits / t, dim=-1)  # (N, K)
            log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)  # (N, K)
            kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
            loss = loss + self.alpha * t * t * kl
        if self.alpha < 1:
            loss = loss + (1.0 - self.alpha) * F.cross_entropy(student_logits, y)
        return loss


class FeatureKDLoss(nn.Module):
    """Sum over pairs of ``weight * MSE(proj(f_s), f_t)``, MSE averaged over all elements.

    ``proj`` maps the student's channels to the teacher's (``make_projection``): identity when the widths
    agree, a learned linear / 1x1 conv otherwise. Those projections are this module's parameters; give them to
    the optimizer together with the student's.

    Args:
        matches: the feature pairs.
        student_shapes, teacher_shapes: one recorded batch's shape per pair, to size the projections.
    """

    def __init__(
        self,
        matches: Sequence[FeatureMatch],
        student_shapes: Sequence[Sequence[int]],
        teacher_shapes: Sequence[Sequence[int]],
    ):
        super().__init__()
        self.matches = tuple(matches)
        self.projections = nn.ModuleList(
            make_projection(s, t, f"features[{i}]")
            for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes))
        )

    def forward(
        self, student_feats: Mapping[str, torch.Tensor], teacher_feats: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Loss for ``{module name: output}`` of both networks (same batch); returns a scalar."""
        total = None
        for match, proj in zip(self.matches, self.projections):
            f_s = proj(student_feats[match.student])  # (N, C_t, ...)
            f_t = teacher_feats[match.teacher].detach()  # (N, C_t, ...)
            term = match.weight * F.mse_loss(f_s, f_t)
            total = term if total is None else total + term
        if total is None:
            raise ValueError("FeatureKDLoss has no feature pairs")
        return total


class RegularizationLoss(nn.Module):
    """``weight * sum(w**2)`` (l2) or ``weight * sum(|w|)`` (l1) over a model's weights.

    Weights are parameters with two or more dimensions (linear and conv weights, embeddings); biases and
    normalisation scales are not penalised. This is the plain sum, not the mean, as in lambda * sum w**2.

    Args:
        config: kind and weight.
    """

    def __init__(self, config: Regularization):
        super().__init__()
        self.kind, self.weight = config.kind, float(config.weight)

    def forward(self, model: nn.Module) -> torch.Tensor:
        """Penalty on ``model``'s current weights; a scalar on the weights' device."""
        weights = [p for p in model.parameters() if p.ndim >= 2]
        if not weights:
            return torch.zeros(())
        if self.kind == "l2":
            penalty = torch.stack([w.pow(2).sum() for w in weights]).sum()
        else:
            penalty = torch.stack([w.abs().sum() for w in weights]).sum()
        return self.weight * penalty
