"""Distillation through torchslim's loop with mixup: the teacher sees the student's blended inputs."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.distill import KDConfig, distill
from torchslim.train import TrainConfig, fit


class Recording(nn.Module):
    """A linear classifier that keeps every training-mode input (the teacher: every input)."""

    def __init__(self, d_in=6, classes=3, always=False):
        super().__init__()
        self.fc, self.always, self.seen = nn.Linear(d_in, classes), always, []

    def forward(self, x):  # (N, 1, d_in) -> (N, classes)
        if self.always or self.training:
            self.seen.append(x.detach().cpu().clone())
        return self.fc(x.flatten(1))


def test_teacher_sees_the_same_mixed_inputs_and_runs_repeat():
    torch.manual_seed(0)
    x, y = torch.randn(96, 1, 6), torch.randint(0, 3, (96,))
    train, val = TensorDataset(x, y), TensorDataset(x[:32], y[:32])

    def run():
        torch.manual_seed(1)
        student, teacher = Recording(), Recording(always=True).eval()
        cfg = KDConfig(temperature=2.0, alpha=0.5, epochs=2, lr=1e-2, batch_size=32, augment="mixup")

        def loop(*, model, data, loss_fn, extra_params, epochs, lr, batch_size):
            return fit(model, data, val, TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size,
                                                     augment=cfg.augment),
                       seed=5, loss_fn=lambda m, xb, yb: loss_fn(m, (xb, yb)))

        distill(student, teacher, train, cfg, fit=loop)
        return student, teacher

    student, teacher = run()
    # The probe batch (before training) is the first teacher call; after it, one call per training step.
    batches = teacher.seen[1:]
    assert len(batches) == 2 * 3 and len(student.seen) == len(batches)
    assert all(torch.equal(s, t) for s, t in zip(student.seen, batches))
    raw = x.flatten(1)  # (96, 6): the mixed inputs are blends, not training rows
    blended = sum(int(not any(torch.equal(row, r) for r in raw)) for b in batches for row in b.flatten(1))
    assert blended > len(batches) * 32 // 2
    again, _ = run()
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), again.state_dict().values()))
