import math

import pytest
import torch

from torchslim._errors import ConfigError
from torchslim.data import load_splits
from torchslim.domain import DataSpec, ModelSpec
from torchslim.models import build_model
from torchslim.train import TrainConfig, fit, lr_at, mixup, random_shift

CFG = TrainConfig(epochs=4, lr=5e-3, batch_size=64)


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataSpec(source="digits"))


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelSpec(name="lenet300_100", kwargs={"width": 0.25}))


def test_training_learns_and_is_deterministic(digits):
    a, b = _model(), _model()
    ra = fit(a, digits.train, digits.val, CFG, seed=3)
    fit(b, digits.train, digits.val, CFG, seed=3)
    assert ra.best_val > 0.8
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert len(ra.history) == 4 and ra.history[0]["train_loss"] > ra.history[-1]["train_loss"]


def test_resume_after_interruption_gives_the_same_weights(digits, tmp_path):
    full = _model()
    fit(full, digits.train, digits.val, CFG, seed=1, checkpoint=tmp_path / "full.safetensors")

    steps_per_epoch = math.ceil(len(digits.train) / CFG.batch_size)
    calls = {"n": 0}

    def crash_in_epoch_three():
        calls["n"] += 1
        if calls["n"] == 2 * steps_per_epoch + 5:
            raise KeyboardInterrupt

    part = _model()
    ckpt = tmp_path / "part.safetensors"
    with pytest.raises(KeyboardInterrupt):
        fit(part, digits.train, digits.val, CFG, seed=1, checkpoint=ckpt, after_step=crash_in_epoch_three)
    resumed = _model(seed=123)  # a fresh process would rebuild the model from another state
    result = fit(resumed, digits.train, digits.val, CFG, seed=1, checkpoint=ckpt, resume=True)
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert all(torch.equal(x, y) for x, y in zip(full.state_dict().values(), resumed.state_dict().values()))


def test_best_validation_epoch_is_kept(digits):
    model = _model()
    result = fit(model, digits.train, digits.val, CFG, seed=0)
    best = max(h["val_accuracy"] for h in result.history)
    assert result.best_val == best
    from torchslim.evaluate import compute_metric
    assert compute_metric(model, digits.val) == best


def test_cosine_schedule_and_shift_augmentation():
    cfg = TrainConfig(epochs=10, lr=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 5) == pytest.approx(0.05)
    assert lr_at(TrainConfig(epochs=10, lr=0.1, schedule="constant"), 9) == 0.1
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    shifted = random_shift(x)
    assert shifted.shape == x.shape and torch.all(shifted.sum(dim=(1, 2, 3)) == 1)
    rows, cols = shifted[:, 0].nonzero()[:, 1], shifted[:, 0].nonzero()[:, 2]
    assert set(rows.tolist()) <= {3, 4, 5} and set(cols.tolist()) <= {3, 4, 5} and len(set(rows.tolist())) == 3
    assert random_shift(torch.rand(5, 1, 40)).shape == (5, 1, 40)


def test_mixup_blends_labels_with_the_inputs_weight_and_repeats_for_a_seed():
    n, k = 16, 4
    x = torch.eye(n).unsqueeze(1)  # (N, 1, N): sample i is the unit vector e_i, so x_mix[i] holds its blend weights
    y = torch.arange(n) % k
    torch.manual_seed(0)
    xm, ym = mixup(x, y, k, alpha=1.0)
    weights = xm[:, 0, :]  # (N, N): row i = lam * e_i + (1 - lam) * e_perm(i)
    # Each label is the same blend of one-hot labels as its input is of samples.
    assert torch.allclose(ym, weights @ torch.nn.functional.one_hot(y, k).float())
    assert torch.allclose(ym.sum(dim=1), torch.ones(n))
    blended = weights.count_nonzero(dim=1) == 2  # rows whose partner is another sample
    assert blended.sum() >= n // 2
    own = weights.diagonal()[blended]  # each sample's own weight: one lam for the whole batch
    assert 0 < own[0] < 1 and torch.allclose(own, own[0].expand_as(own))
    torch.manual_seed(0)
    again = mixup(x, y, k, alpha=1.0)
    assert torch.equal(again[0], xm) and torch.equal(again[1], ym)
    torch.manual_seed(1)
    assert not torch.equal(mixup(x, y, k, alpha=1.0)[0], xm)
    probs = torch.softmax(torch.randn(n, k), dim=1)  # already probabilities: mixed as they are
    assert torch.allclose(mixup(x, probs, k)[1].sum(dim=1), torch.ones(n))


def test_training_with_mixup_learns_and_is_deterministic(digits):
    cfg = TrainConfig(epochs=4, lr=5e-3, batch_size=64, augment="shift+mixup")
    a, b = _model(), _model()
    torch.manual_seed(7)  # the blend weights and partners come from torch's generator, as the shifts do
    ra = fit(a, digits.train, digits.val, cfg, seed=3)
    torch.manual_seed(7)
    fit(b, digits.train, digits.val, cfg, seed=3)
    assert ra.best_val > 0.7
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_augmentation_is_a_config_error():
    with pytest.raises(ConfigError, match="augment: must be one of none, shift, mixup, shift\\+mixup, got 'flip'"):
        TrainConfig(epochs=1, lr=0.1, augment="flip")
