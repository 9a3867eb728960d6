"""Fine-tuning with ``distill`` and ``augment``: the unpruned teacher scores the very inputs the student trains on."""

from types import SimpleNamespace

import torch
from torch.utils.data import TensorDataset

from torchslim.prune import Distill, Finetune, StructuredConfig, prune_
from torchslim.prune.stage import _finetune_fn
from torchslim.train import fit

from .models import LeNet5


class RecordingLeNet5(LeNet5):
    """LeNet5 that logs every input with who ran it: the frozen teacher (no parameter needs a gradient), the
    student while training, or an evaluation pass."""

    log: list = []  # on the class: the teacher prune_ copies from the model writes here too

    def forward(self, x):
        role = "teacher" if not self.fc2.weight.requires_grad else "student" if self.training else "eval"
        self.log.append((role, x.detach().clone()))
        return super().forward(x)


def test_the_teacher_sees_the_students_augmented_inputs(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    torch.manual_seed(0)
    x = torch.randint(0, 17, (32, 1, 8, 8)) / 16.0  # pixels on the digits' 1/16 grid; a mixup blend leaves it
    y = torch.randint(0, 10, (32,))
    data = TensorDataset(x, y)

    def ctx_fit(model, cfg, *, desc, after_step=None, **kwargs):
        RecordingLeNet5.log.clear()  # only what the fine-tuning runs
        return fit(model, data, data, cfg, seed=0, after_step=after_step, desc=desc, **kwargs)

    config = StructuredConfig(sparsity=0.5, finetune=Finetune(epochs=1, lr=1e-3, batch_size=8, augment="shift+mixup",
                                                              distill=Distill(4.0, 0.9)))
    model = RecordingLeNet5()
    prune_(model, config, calibration=[(x[:8], y[:8])], finetune=_finetune_fn(SimpleNamespace(fit=ctx_fit), config))

    teacher = [t for role, t in RecordingLeNet5.log if role == "teacher"]
    student = [t for role, t in RecordingLeNet5.log if role == "student"]
    assert len(teacher) == len(student) == 4  # 32 samples in batches of 8
    for t, s in zip(teacher, student):
        assert torch.equal(t, s)
    off_grid = [(16 * s - (16 * s).round()).abs().max().item() for s in student]
    assert max(off_grid) > 1e-3  # the inputs were mixed: the augmentation reached the loss, teacher included


def test_ema_ends_the_finetuning_with_the_moving_average_of_masked_weights():
    from torchslim.prune import MagnitudeConfig

    from .models import MLP

    def finetune(m, epochs, after_step, step, steps, loss_fn=None):
        weights = [p for n, p in m.named_parameters() if n.endswith("weight")]
        for value in (0.0, 1.0, 2.0, 4.0):  # the state before the first step, then three optimizer steps
            with torch.no_grad():
                for p in m.parameters():
                    p.fill_(value)
            after_step()
        assert all(bool((w == 0).any()) for w in weights)  # the masks hold after each step

    model = MLP()
    config = MagnitudeConfig(sparsity=0.5, finetune=Finetune(epochs=1, lr=1e-3, ema=0.75))
    report = prune_(model, config, finetune=finetune)
    # update n (from 0) decays by min(0.75, (1 + n) / (10 + n)): 1/10, 2/11, 3/12 (early states fade fast)
    expected = 0.0
    for n, value in enumerate((1.0, 2.0, 4.0)):
        decay = min(0.75, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
    assert abs(expected - 3.45) < 1e-9  # 0.9, 1.8, 3.45
    for name in ("fc1", "fc2", "fc3"):
        layer, mask = getattr(model, name), report.masks[name]
        torch.testing.assert_close(layer.weight[mask], torch.full_like(layer.weight[mask], expected))
        assert bool((layer.weight[~mask] == 0).all())  # averaged after the mask: pruned weights stay zero
        torch.testing.assert_close(layer.bias, torch.full_like(layer.bias, expected))


def test_a_bad_ema_is_named():
    import pytest

    from torchslim._errors import ConfigError
    from torchslim.prune import config_from_mapping

    for bad in (1.0, 0, "0.9", float("nan")):
        with pytest.raises(ConfigError) as err:
            config_from_mapping({"method": "structured", "sparsity": 0.5,
                                 "finetune": {"epochs": 1, "lr": 1e-3, "ema": bad}})
        assert str(err.value).startswith("finetune.ema")
