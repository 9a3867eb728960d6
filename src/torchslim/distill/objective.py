"""The combined distillation objective and the ``loss_fn(model, batch)`` the training loop calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim.distill.config import KDConfig
from torchslim.distill.features import FeatureRecorder, format_shape
from torchslim.distill.losses import FeatureKDLoss, KDLoss, RegularizationLoss
from torchslim.distributed import module_device

__all__ = ["DistillationObjective", "DistillLossFn", "StudentWithExtras", "make_loss_fn"]


class DistillationObjective(nn.Module):
    """Soft targets + optional feature matching + optional weight penalty, summed.

    Its parameters are the feature projections (if any); they train with the student.

    Args:
        kd: the soft-target loss.
        features: the feature-matching loss, or None.
        regularization: the weight penalty, or None.
    """

    def __init__(
        self,
        kd: KDLoss,
        features: FeatureKDLoss | None = None,
        regularization: RegularizationLoss | None = None,
    ):
        super().__init__()
        self.kd, self.features, self.regularization = kd, features, regularization

    def terms(
        self,
        student_out: torch.Tensor,
        teacher_out: torch.Tensor,
        y: torch.Tensor,
        student_feats: Mapping[str, torch.Tensor] | None = None,
        teacher_feats: Mapping[str, torch.Tensor] | None = None,
        student: nn.Module | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each weighted term by name ("kd", "features", "regularization"), for logging; they sum to the loss.

        ``student`` is needed only when a weight penalty is configured.
        """
        out = {"kd": self.kd(student_out, teacher_out, y)}
        if self.features is not None:
            out["features"] = self.features(student_feats or {}, teacher_feats or {})
        if self.regularization is not None:
            if student is None:
                raise ValueError("a weight penalty is configured: pass student=")
            out["regularization"] = self.regularization(student).to(student_out.device)
        return out

    def forward(
        self, student_out, teacher_out, y, student_feats=None, teacher_feats=None, student=None
    ) -> torch.Tensor:
        """The total loss, a scalar (arguments as in ``terms``)."""
        return sum(self.terms(student_out, teacher_out, y, student_feats, teacher_feats, student).values())


def _logits(output: object, who: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the {who} returned {type(output).__name__}; distillation needs a logits tensor")
    return output


class DistillLossFn:
    """``loss_fn(model, batch) -> loss``: runs the teacher (eval, no grad) and the student, returns the objective.

    ``model`` is the student given to ``make_loss_fn`` or a wrapper that calls it (DistributedDataParallel):
    feature hooks sit on the student's own modules. Call ``close()`` after training to remove them.

    Attributes:
        objective: the ``DistillationObjective``; ``extra_parameters()`` are its trainable parameters.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, objective: DistillationObjective, config: KDConfig):
        self.student, self.teacher, self.objective = student, teacher, objective
        self.matches = config.features
        fields = [f"features[{i}]" for i in range(len(self.matches))]
        s_names, t_names = [m.student for m in self.matches], [m.teacher for m in self.matches]
        self._student_rec = self._teacher_rec = None
        if self.matches:
            self._student_rec = FeatureRecorder(student, s_names, [f + ".student" for f in fields])
            try:
                self._teacher_rec = FeatureRecorder(teacher, t_names, [f + ".teacher" for f in fields])
            except ConfigError:
                self._student_rec.close()
                raise

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters to train with the student's (feature projections); empty when there are none."""
        return list(self.objective.parameters())

    def forward_both(self, model: nn.Module, x: torch.Tensor):
        """(student logits, teacher logits, student features, teacher features) for one input batch."""
        self.teacher.eval()  # the teacher is fixed: no dropout, no batch-norm statistics updates
        if module_device(self.teacher, x.device) != x.device:
            self.teacher.to(x.device)  # the training loop moved the student (to the GPU): the teacher follows
        with torch.no_grad():
            if self._teacher_rec:
                self._teacher_rec.start()
            try:
                t_out = _logits(self.teacher(x), "teacher")
            finally:
                t_feats = self._teacher_rec.stop() if self._teacher_rec else {}
        if self._student_rec:
            self._student_rec.start()
        try:
            s_out = _logits(model(x), "student")
        finally:
            s_feats = self._student_rec.stop() if self._student_rec else {}
        for i, m in enumerate(self.matches):
            if m.student not in s_feats:
                raise RuntimeError(
                    f"features[{i}]: module {m.student!r} did not run; call the loss with the student it was "
                    "built for (or a wrapper of it)"
                )
        t_out = t_out.to(s_out.device)
        t_feats = {k: v.to(s_out.device) for k, v in t_feats.items()}
        return s_out, t_out, s_feats, t_feats

    def __call__(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """The loss for ``batch = (x, y)``, a scalar with gradients into ``model`` and the projections."""
        x, y = batch
        s_out, t_out, s_feats, t_feats = self.forward_both(model, x)
        # The weight penalty reads the student's own weights, not a wrapper's (which may hold more parameters).
        return self.objective(s_out, t_out, y, s_feats, t_feats, student=self.student)

    def close(self) -> None:
        """Remove the feature hooks from both networks."""
        for rec in (self._student_rec, self._teacher_rec):
            if rec:
                rec.close()


def make_loss_fn(
    student: nn.Module, teacher: nn.Module, config: KDConfig, probe: Sequence[torch.Tensor]
) -> DistillLossFn:
    """Build the training loss for ``config`` and check it on one batch before any training.

    The probe batch runs through both networks (eval mode, no grad) to check that their outputs have the same
    shape and to size the feature projections. The projections are created on the student's device.

    Args:
        student: the network to train.
        teacher: the fixed network to learn from.
        config: temperature, alpha, feature pairs, weight penalty.
        probe: one batch ``(x, y)``.

    Returns:
        A ``DistillLossFn``; train ``student`` together with ``loss_fn.extra_parameters()``.
    """
    kd = KDLoss(config.temperature, config.alpha)
    penalty = config.regularization
    reg = RegularizationLoss(penalty) if penalty is not None and penalty.weight > 0 else None
    loss_fn = DistillLossFn(student, teacher, DistillationObjective(kd, None, reg), config)
    try:
        was_training = student.training
        student.eval()  # the probe must not move batch-norm statistics
        try:
            with torch.no_grad():
                s_out, t_out, s_feats, t_feats = loss_fn.forward_both(student, probe[0])
        finally:
            student.train(was_training)
        if s_out.shape[1:] != t_out.shape[1:]:
            raise ConfigError(
                "student",
                f"output shape {format_shape(s_out.shape)} does not match the teacher's {format_shape(t_out.shape)}",
            )
        if config.features:
            features = FeatureKDLoss(
                config.features,
                [s_feats[m.student].shape for m in config.features],
                [t_feats[m.teacher].shape for m in config.features],
            )
            loss_fn.objective.features = features.to(module_device(student, s_out.device))
    except Exception:
        loss_fn.close()
        raise
    return loss_fn


class StudentWithExtras(nn.Module):
    """The student together with the loss's trainable parameters (feature projections), so that a training loop
    optimises, checkpoints, resumes and (under DDP) synchronises them as one module. Its forward is the student's.
    """

    def __init__(self, student: nn.Module, extra: list[nn.Parameter]):
        super().__init__()
        self.student = student
        self.extra = nn.ParameterList(extra)  # the same Parameter objects the loss uses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)
