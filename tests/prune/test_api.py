from dataclasses import dataclass

import pytest
import torch

from torchslim.prune import MagnitudeConfig, PruneReport, prune_, register_pruner
from torchslim.prune.api import _HANDLERS

from .models import MLP


def test_unknown_config_lists_known_ones():
    @dataclass(frozen=True)
    class NoSuchConfig:
        sparsity: float = 0.5

    with pytest.raises(TypeError, match="ActivationConfig, MagnitudeConfig, StructuredConfig"):
        prune_(MLP(), NoSuchConfig())


def test_a_new_method_registers_without_touching_the_api():
    @dataclass(frozen=True)
    class ZeroBiasConfig:
        pass

    @register_pruner(ZeroBiasConfig)
    def zero_biases(model, config, ctx):
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Linear):
                    m.bias.zero_()
        return PruneReport("zero_bias", (), 0, 0, 0, 0, 0, 0)

    try:
        model = MLP()
        assert prune_(model, ZeroBiasConfig()).method == "zero_bias"
        assert float(model.fc1.bias.detach().abs().sum()) == 0.0
    finally:
        _HANDLERS.pop(ZeroBiasConfig)


def test_calibration_accepts_bare_tensors_and_rejects_other_batches():
    from torchslim.prune import ActivationConfig
    model = MLP()
    with torch.no_grad():
        model.fc1.bias[[2, 7]] = -1e4  # these ReLU units never fire
    report = prune_(model, ActivationConfig(threshold=1e-6), calibration=[torch.randn(128, 64), torch.randn(128, 64)])
    assert list(report.layer("fc1").removed) == [2, 7] and model.fc1.out_features == 298
    with pytest.raises(TypeError, match="batch"):
        prune_(MLP(), ActivationConfig(threshold=0.1), calibration=[{"x": torch.randn(4, 64)}])


def test_model_without_schedule_finetune_runs_once_after_pruning():
    from torchslim.prune import Finetune
    calls = []
    prune_(MLP(), MagnitudeConfig(sparsity=0.5, finetune=Finetune(epochs=3, lr=0.1)),
           finetune=lambda m, e, hook, step, steps: calls.append((e, step, steps)))
    assert calls == [(3, 1, 1)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_method_runs_on_cuda():
    from torchslim.prune import ActivationConfig, StructuredConfig

    from .models import TransformerClassifier
    x = torch.randn(8, 64)
    batches = [(x, torch.randint(0, 10, (8,)))]
    # (an untrained MLP: at 90 % global sparsity its 300x100 layer, of the smallest initial weights, would empty)
    for config in (MagnitudeConfig(sparsity=0.5, scope="global"), ActivationConfig(threshold=0.1),
                   StructuredConfig(sparsity=0.5, importance="taylor")):
        model = MLP().cuda()
        report = prune_(model, config, calibration=batches)
        report.after_step()
        assert model(x.cuda()).shape == (8, 10)
    model = TransformerClassifier().cuda()
    prune_(model, StructuredConfig(sparsity=0.5, importance="activation"),
           calibration=[(torch.randn(4, 5, 6), torch.randint(0, 3, (4,)))])
    assert model(torch.randn(4, 5, 6).cuda()).shape == (4, 3)
