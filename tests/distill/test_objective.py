"""make_loss_fn and distill: hooks by module name, shape checks, and an end-to-end run that learns."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchslim._errors import ConfigError
from torchslim.distill import (
    FeatureMatch,
    KDConfig,
    KDLoss,
    Regularization,
    RegularizationLoss,
    distill,
    make_loss_fn,
)


class MLP(nn.Module):
    def __init__(self, hidden: int, out: int = 3, d_in: int = 8):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, hidden), nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _batch(n=16, d_in=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_loss_fn_without_features_is_kd_on_both_outputs_and_teacher_gets_no_grad():
    torch.manual_seed(0)
    student, teacher = MLP(4), MLP(16)
    teacher.train()
    x, y = _batch()
    cfg = KDConfig(temperature=2.0, alpha=0.7, regularization=Regularization("l2", 1e-2))
    loss_fn = make_loss_fn(student, teacher, cfg, (x, y))
    loss = loss_fn(student, (x, y))
    with torch.no_grad():
        t_out = teacher(x)
    expected = KDLoss(2.0, 0.7)(student(x), t_out, y) + RegularizationLoss(cfg.regularization)(student)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not teacher.training  # the teacher runs in eval mode
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert loss_fn.extra_parameters() == []


def test_feature_pair_with_differing_widths_trains_a_projection():
    torch.manual_seed(0)
    student, teacher = MLP(4), MLP(16)
    x, y = _batch()
    cfg = KDConfig(alpha=0.5, features=(FeatureMatch("fc1", "fc1", 0.1),))
    loss_fn = make_loss_fn(student, teacher, cfg, (x, y))
    extra = loss_fn.extra_parameters()
    assert [tuple(p.shape) for p in extra] == [(16, 4), (16,)]  # Linear(4 -> 16)
    s_out, t_out, s_feats, t_feats = loss_fn.forward_both(student, x)
    assert set(s_feats) == set(t_feats) == {"fc1"}
    terms = loss_fn.objective.terms(s_out, t_out, y, s_feats, t_feats, student=student)
    assert set(terms) == {"kd", "features"}
    proj = loss_fn.objective.features.projections[0]
    with torch.no_grad():
        f_t = teacher.fc1(x)
    assert terms["features"].item() == pytest.approx(0.1 * F.mse_loss(proj(student.fc1(x)), f_t).item(), rel=1e-6)
    loss_fn(student, (x, y)).backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert student.fc1.weight.grad is not None and student.fc1.weight.grad.abs().sum() > 0
    loss_fn.close()
    assert not student.fc1._forward_hooks and not teacher.fc1._forward_hooks


def test_hooks_record_nothing_outside_the_loss():
    torch.manual_seed(0)
    student, teacher = MLP(4), MLP(16)
    x, y = _batch()
    loss_fn = make_loss_fn(student, teacher, KDConfig(features=(FeatureMatch("fc1", "fc1"),)), (x, y))
    loss_fn._student_rec.outputs.clear()
    student(x)
    assert loss_fn._student_rec.outputs == {}


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_unknown_feature_name_lists_available_modules(side):
    student, teacher = MLP(4), MLP(16)
    names = {"student": "fc1", "teacher": "fc1", side: "encoder"}
    cfg = KDConfig(features=(FeatureMatch("fc2", "fc2"), FeatureMatch(names["student"], names["teacher"])))
    with pytest.raises(ConfigError) as err:
        make_loss_fn(student, teacher, cfg, _batch())
    assert err.value.field == f"features[1].{side}"
    assert err.value.message == "no module named 'encoder'; available: fc1, fc2"
    # No hook is left behind by the failed build.
    assert not any(m._forward_hooks for net in (student, teacher) for m in net.modules())


def test_output_shape_mismatch_is_reported_before_training():
    with pytest.raises(ConfigError) as err:
        make_loss_fn(MLP(4, out=10), MLP(16, out=5), KDConfig(), _batch())
    assert err.value.field == "student"
    assert err.value.message == "output shape (N, 10) does not match the teacher's (N, 5)"


def test_unknown_config_type_lists_known_configs():
    with pytest.raises(ConfigError, match="known configs: KDConfig"):
        distill(MLP(4), MLP(16), [], object(), fit=lambda **kw: None)


def _learnable_data(n=512, d_in=8, classes=3, seed=0):
    # Labels from a fixed random linear rule: learnable, and a teacher trained on it is confident.
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    w = torch.randn(d_in, classes, generator=g)
    return TensorDataset(x, (x @ w).argmax(dim=1))


def _simple_fit(*, model, data, loss_fn, extra_params, epochs, lr, batch_size, history=None):
    """A minimal loop for the test: Adam over student + extras; appends each epoch's mean loss to history."""
    opt = torch.optim.Adam([*model.parameters(), *extra_params], lr=lr)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    history = [] if history is None else history
    model.train()
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y in loader:
            loss = loss_fn(model, (x, y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(x), count + len(x)
        history.append(total / count)
    return history


def _accuracy(model, data):
    x, y = data.tensors
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_end_to_end_distill_into_narrower_student_learns():
    torch.manual_seed(0)
    data = _learnable_data()
    teacher = MLP(32)
    ce_loss = lambda model, batch: F.cross_entropy(model(batch[0]), batch[1])  # noqa: E731
    _simple_fit(model=teacher, data=data, loss_fn=ce_loss, extra_params=[], epochs=15, lr=1e-2, batch_size=64)
    teacher_acc = _accuracy(teacher, data)
    assert teacher_acc > 0.9

    student = MLP(8)
    before = [p.detach().clone() for p in student.parameters()]
    acc_before = _accuracy(student, data)
    cfg = KDConfig(
        temperature=4.0, alpha=0.9, epochs=20, lr=1e-2, batch_size=64,
        features=(FeatureMatch("fc1", "fc1", 0.1),), regularization=Regularization("l2", 1e-5),
    )
    history = []
    out = distill(student, teacher, data, cfg, fit=functools.partial(_simple_fit, history=history))
    assert out is student
    assert len(history) == 20
    assert history[-1] < 0.05 * history[0], history
    assert _accuracy(student, data) > max(0.9, acc_before + 0.3)
    x = data.tensors[0]
    with torch.no_grad():  # it learned to imitate the teacher: they agree on nearly every input
        assert (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item() > 0.9
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert not any(m._forward_hooks for net in (student, teacher) for m in net.modules())


def test_self_distillation_copies_the_teacher():
    torch.manual_seed(0)
    data = _learnable_data(n=64)
    model = MLP(8)
    seen = {}

    def fit(*, model, data, loss_fn, extra_params, epochs, lr, batch_size):
        seen["teacher"] = loss_fn.teacher
        _simple_fit(model=model, data=data, loss_fn=loss_fn, extra_params=extra_params, epochs=1, lr=lr,
                    batch_size=batch_size)

    start = model.fc1.weight.detach().clone()
    distill(model, model, data, KDConfig(epochs=1, lr=1e-2), fit=fit)
    assert seen["teacher"] is not model
    assert torch.equal(seen["teacher"].fc1.weight, start)  # the teacher stayed fixed
    assert not torch.equal(model.fc1.weight, start)
