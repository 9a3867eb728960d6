"""Loss terms equal their formulas on fixed numbers."""

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.distill import FeatureKDLoss, FeatureMatch, KDLoss, Regularization, RegularizationLoss

# Fixed logits (N=3, K=4) and labels, reused by the formula checks.
Z_S = np.array([[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 1.5], [-2.0, 0.5, 0.0, 0.7]])
Z_T = np.array([[3.0, -1.0, 0.5, 0.0], [0.0, 2.5, -0.5, 1.0], [-1.0, 1.0, 2.0, -0.3]])
Y = np.array([2, 3, 1])


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _reference(z_s, z_t, y, t, alpha):
    p_s, p_t = _softmax(z_s / t), _softmax(z_t / t)
    kl = np.sum(p_t * (np.log(p_t) - np.log(p_s))) / len(z_s)  # batch mean of per-sample KL(p_t || p_s)
    ce = -np.mean(np.log(_softmax(z_s)[np.arange(len(y)), y]))
    return alpha * t * t * kl + (1 - alpha) * ce, kl, ce


def _kd(t, alpha):
    return KDLoss(t, alpha)(torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor(Y)).item()


@pytest.mark.parametrize("t, alpha", [(4.0, 0.9), (1.0, 0.5), (2.5, 0.3), (10.0, 0.75)])
def test_kd_loss_equals_formula_with_t_squared(t, alpha):
    expected, kl, _ = _reference(Z_S, Z_T, Y, t, alpha)
    assert _kd(t, alpha) == pytest.approx(expected, rel=1e-12)
    assert kl > 0  # the check is not vacuous: the soft term contributes


def test_alpha_zero_is_exactly_cross_entropy():
    z_s, z_t, y = torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor(Y)
    assert torch.equal(KDLoss(4.0, 0.0)(z_s, z_t, y), nn.functional.cross_entropy(z_s, y))


def test_alpha_one_is_pure_kd_and_ignores_labels():
    z_s, z_t = torch.tensor(Z_S), torch.tensor(Z_T)
    a = KDLoss(3.0, 1.0)(z_s, z_t, torch.tensor(Y))
    b = KDLoss(3.0, 1.0)(z_s, z_t, torch.tensor([0, 0, 0]))
    assert torch.equal(a, b)
    assert a.item() == pytest.approx(_reference(Z_S, Z_T, Y, 3.0, 1.0)[0], rel=1e-12)


def test_kd_loss_zero_when_student_matches_teacher_and_gradient_only_to_student():
    z_t = torch.tensor(Z_T, requires_grad=True)
    z_s = torch.tensor(Z_T, requires_grad=True)
    loss = KDLoss(4.0, 1.0)(z_s, z_t, torch.tensor(Y))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    KDLoss(4.0, 0.9)(torch.tensor(Z_S, requires_grad=True), z_t, torch.tensor(Y)).backward()
    assert z_t.grad is None


def test_feature_loss_with_equal_widths_is_weighted_mse():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(5, 8), torch.randn(5, 8)
    loss = FeatureKDLoss([FeatureMatch("a", "b", 0.3)], [f_s.shape], [f_t.shape])
    assert isinstance(loss.projections[0], nn.Identity)
    assert list(loss.parameters()) == []
    assert loss({"a": f_s}, {"b": f_t}).item() == pytest.approx(0.3 * ((f_s - f_t) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize(
    "s_shape, t_shape, kind",
    [((4, 6), (4, 16), nn.Linear), ((4, 6, 10), (4, 16, 10), nn.Conv1d), ((4, 6, 3, 3), (4, 16, 3, 3), nn.Conv2d)],
)
def test_feature_loss_projects_differing_widths_and_gradient_flows(s_shape, t_shape, kind):
    torch.manual_seed(0)
    f_s = torch.randn(s_shape, requires_grad=True)
    f_t = torch.randn(t_shape)
    loss_mod = FeatureKDLoss([FeatureMatch("s", "t", 2.0)], [s_shape], [t_shape])
    proj = loss_mod.projections[0]
    assert isinstance(proj, kind) and proj.weight.shape[:2] == (16, 6)
    assert {id(p) for p in loss_mod.parameters()} == {id(proj.weight), id(proj.bias)}
    loss = loss_mod({"s": f_s}, {"t": f_t})
    expected = 2.0 * ((proj(f_s) - f_t) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0


def test_feature_shapes_that_differ_beyond_channels_are_a_config_error():
    from torchslim._errors import ConfigError

    with pytest.raises(ConfigError) as err:
        FeatureKDLoss([FeatureMatch("s", "t")], [(4, 6, 10)], [(4, 6, 5)])
    assert err.value.field == "features[0]" and "(N, 6, 10)" in err.value.message


def test_regularization_l2_and_l1_equal_sums_over_weights_without_biases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    w1, w2 = model[0].weight.detach().numpy(), model[2].weight.detach().numpy()
    l2 = RegularizationLoss(Regularization("l2", 1e-3))(model).item()
    l1 = RegularizationLoss(Regularization("l1", 0.5))(model).item()
    assert l2 == pytest.approx(1e-3 * (np.sum(w1**2) + np.sum(w2**2)), rel=1e-6)
    assert l1 == pytest.approx(0.5 * (np.sum(np.abs(w1)) + np.sum(np.abs(w2))), rel=1e-6)
    # A bias change leaves the penalty unchanged; a weight change does not.
    with torch.no_grad():
        model[0].bias.add_(10.0)
    assert RegularizationLoss(Regularization("l2", 1e-3))(model).item() == pytest.approx(l2, rel=1e-6)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert RegularizationLoss(Regularization("l2", 1e-3))(model).item() > l2 * 1.5


def test_kd_cross_entropy_term_reads_label_probabilities():
    probs = _softmax(np.array([[0.0, 1.0, 0.0, 2.0], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, -1.0, 0.0]]))  # (N, K)
    t, alpha = 4.0, 0.7
    _, kl, _ = _reference(Z_S, Z_T, np.array([0, 0, 0]), t, alpha)
    ce = -np.mean(np.sum(probs * np.log(_softmax(Z_S)), axis=1))  # cross-entropy against a distribution
    loss = KDLoss(t, alpha)(torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor(probs)).item()
    assert loss == pytest.approx(alpha * t * t * kl + (1 - alpha) * ce, rel=1e-12)
