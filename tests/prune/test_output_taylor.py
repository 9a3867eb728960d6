"""The output_taylor importance, checked against a hand computation, and half a Transformer encoder classifier
removed (heads and FFN neurons) with its accuracy kept by distillation from the unpruned model."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.prune import Distill, Finetune, Schedule, StructuredConfig, prune_
from torchslim.prune.attention import convert_attention_
from torchslim.prune.calibration import output_taylor

ROOT = Path(__file__).resolve().parents[2]


class ToyAttention(nn.Module):
    """One self-attention of 3 heads (E = 6, head_dim 2); the output is summed over tokens: (N, 6)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 3, batch_first=True)

    def forward(self, x):  # (N, L, 6)
        return self.attn(x, x, x, need_weights=False)[0].sum(1)


def _linear_loss(outputs, targets):  # mean over samples of <output, target>: ∂L_n/∂output_n = target_n
    return (outputs * targets).sum(-1).mean()


def _by_hand(attn: nn.MultiheadAttention, x, t) -> torch.Tensor:
    """Mean over samples of |∂L_n/∂m_h| for a mask m_h on head h's output: Σ_l t_n · W_out[:, h] o_{n,l,h}."""
    n, length, e = x.shape
    h, hd = 3, 2
    q, k, v = (F.linear(x, w, b).view(n, length, h, hd).transpose(1, 2)
               for w, b in zip(attn.in_proj_weight.split(e), attn.in_proj_bias.split(e)))
    o = (q @ k.transpose(-2, -1) / hd ** 0.5).softmax(-1) @ v  # (N, H, L, hd)
    w_out = attn.out_proj.weight.view(e, h, hd)  # (E, H, hd)
    d = torch.einsum("ne,ehd,nhld->nh", t, w_out, o)  # (N, H)
    return d.abs().mean(0)


def test_head_scores_match_the_hand_computed_mask_gradient_and_the_least_useful_head_goes():
    torch.manual_seed(0)
    model = ToyAttention()
    with torch.no_grad():
        # head 0: the largest weights in (x10) but almost nothing out (x0.01): l2 keeps it, its output barely counts
        model.attn.in_proj_weight.view(3, 3, 2, 6)[:, 0] *= 10
        model.attn.out_proj.weight.view(6, 3, 2)[:, 0] *= 0.01
    x, t = torch.randn(8, 5, 6), torch.randn(8, 6)
    expected = _by_hand(model.attn, x, t)
    assert int(expected.argmin()) == 0

    converted = copy.deepcopy(model)
    convert_attention_(converted)
    scores = output_taylor(converted, [(x, t)], _linear_loss, {}, {"attn": (converted.attn.out_proj, 3)})["attn"]
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)
    # two batches: the mean is over every sample, not over batches
    scores2 = output_taylor(converted, [(x[:3], t[:3]), (x[3:], t[3:])], _linear_loss, {},
                            {"attn": (converted.attn.out_proj, 3)})["attn"]
    torch.testing.assert_close(scores2, expected, rtol=1e-4, atol=1e-6)

    removed = {}
    for importance in ("l2", "output_taylor"):
        pruned = copy.deepcopy(model)
        report = prune_(pruned, StructuredConfig(sparsity=0.34, importance=importance), calibration=[(x, t)],
                        loss_fn=_linear_loss)
        removed[importance] = {l.name: l.removed for l in report.layers}["attn"]
    assert removed["output_taylor"] == (0,) and removed["l2"] != (0,)


def _digits_transformer():
    """The digits domain's Transformer classifier (domains/digits_transformer.py), its splits."""
    from torchslim.data import load_splits
    from torchslim.domain import DataSpec

    spec = importlib.util.spec_from_file_location("digits_transformer", ROOT / "domains" / "digits_transformer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_row_transformer, load_splits(DataSpec(source="digits"), input_shape=(1, 8, 8))


@pytest.fixture
def one_thread():
    """Small matrices: one thread is fastest, and the numbers do not depend on the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_half_the_heads_and_ffn_neurons_go_and_distillation_keeps_the_accuracy(monkeypatch, one_thread):
    from torchslim.train import TrainConfig, fit

    monkeypatch.setenv("TQDM_DISABLE", "1")
    build, splits = _digits_transformer()
    torch.manual_seed(2)
    model = build(layers=2)
    fit(model, splits.train, splits.val, TrainConfig(epochs=30, lr=3e-3, batch_size=32), seed=2)
    x, y = splits.test.tensors

    def accuracy(m):
        with torch.no_grad():
            device = next(m.parameters()).device  # fit trains on the GPU when there is one
            return 100 * (m.eval()(x.to(device)).argmax(1).cpu() == y).float().mean().item()

    before = accuracy(model)
    assert before > 94  # a trained model: a drop from chance would say nothing
    xs, ys = splits.train.tensors
    calibration = [(xs[i * 64:(i + 1) * 64], ys[i * 64:(i + 1) * 64]) for i in range(8)]
    config = StructuredConfig(sparsity=0.5, importance="output_taylor", schedule=Schedule("polynomial", 3),
                              finetune=Finetune(epochs=10, lr=3e-3, batch_size=32, distill=Distill(4.0, 0.9)))
    got_loss = []

    def finetune(m, epochs, after_step, step, steps, loss_fn=None):
        got_loss.append(loss_fn is not None)
        fit(m, splits.train, splits.val, TrainConfig(epochs=epochs, lr=3e-3, batch_size=32), seed=3,
            after_step=after_step, loss_fn=loss_fn)

    torch.manual_seed(2)
    prune_(model, config, calibration=calibration, finetune=finetune)
    assert got_loss == [True, True, True]  # every step fine-tunes against the unpruned model
    for layer in model.encoder.layers:
        assert layer.self_attn.num_heads == 2 and layer.linear1.out_features == 32
    assert before - accuracy(model) <= 1.0


@pytest.mark.parametrize("distill, field", [({"temperature": 0}, "finetune.distill.temperature"),
                                            ({"alpha": 1.5}, "finetune.distill.alpha"),
                                            ({"tau": 2}, "finetune.distill.tau")])
def test_a_bad_distill_key_is_named(distill, field):
    from torchslim._errors import ConfigError
    from torchslim.prune import config_from_mapping

    with pytest.raises(ConfigError) as err:
        config_from_mapping({"method": "structured", "sparsity": 0.5, "importance": "output_taylor",
                             "finetune": {"epochs": 1, "lr": 1e-3, "distill": distill}})
    assert str(err.value).startswith(field)


def test_distill_defaults_and_round_trip():
    from torchslim.prune import config_from_mapping

    config = config_from_mapping({"method": "structured", "sparsity": 0.5,
                                  "finetune": {"epochs": 1, "lr": 1e-3, "distill": {}}})
    assert config.finetune.distill == Distill(temperature=4.0, alpha=0.9)
    assert config_from_mapping({"method": "structured", "sparsity": 0.5,
                                "finetune": {"epochs": 1, "lr": 1e-3}}).finetune.distill is None
