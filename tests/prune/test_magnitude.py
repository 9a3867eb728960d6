import pytest
import torch
from torch import nn

from torchslim._errors import ConfigError
from torchslim.prune import Finetune, MagnitudeConfig, Schedule, apply_masks_, mask_hook, prune_
from torchslim.prune._select import count

from .models import LeNet5, MLP, TransformerClassifier

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def _weights(model, names=LAYERS):
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach() for n in names}


def test_global_sparsity_is_exact_and_one_threshold():
    model = LeNet5()
    w0 = {n: w.clone() for n, w in _weights(model).items()}
    report = prune_(model, MagnitudeConfig(sparsity=0.9, scope="global"))
    w = _weights(model)
    total = sum(t.numel() for t in w.values())
    zeros = sum(int((t == 0).sum()) for t in w.values())
    assert zeros == count(0.9, total)  # 78134 of 86816
    assert abs(zeros / total - 0.9) <= 1 / total
    assert report.sparsity == pytest.approx(zeros / total)
    pruned = torch.cat([w0[n][w[n] == 0].abs() for n in LAYERS])
    kept = torch.cat([w0[n][w[n] != 0].abs() for n in LAYERS])
    assert pruned.max() <= kept.min()  # one |w| threshold across layers
    assert [l.name for l in report.layers] == LAYERS  # final classifier included
    assert report.params_after == report.params_before
    assert report.nonzero_before - report.nonzero_after == zeros


def test_layer_scope_prunes_each_layer_to_the_sparsity():
    model = LeNet5()
    w0 = {n: w.clone() for n, w in _weights(model).items()}
    prune_(model, MagnitudeConfig(sparsity=0.9))
    for n, t in _weights(model).items():
        assert int((t == 0).sum()) == count(0.9, t.numel()), n
        assert w0[n][t == 0].abs().max() <= w0[n][t != 0].abs().min()


def test_ignore_and_overrides():
    model = LeNet5()
    report = prune_(model, MagnitudeConfig(sparsity=0.8, ignore=["fc2"], overrides={"fc1": 0.5, "re:conv.*": 0.3}))
    w = _weights(model)
    assert int((w["fc2"] == 0).sum()) == 0
    assert int((w["fc1"] == 0).sum()) == count(0.5, w["fc1"].numel())
    assert int((w["conv2"] == 0).sum()) == count(0.3, w["conv2"].numel())
    assert "fc2" not in report.masks and [l.name for l in report.layers] == ["conv1", "conv2", "fc1"]


def test_global_scope_with_override_prunes_overridden_layer_alone():
    model = LeNet5()
    prune_(model, MagnitudeConfig(sparsity=0.9, scope="global", overrides={"fc2": 0.2}))
    w = _weights(model)
    assert int((w["fc2"] == 0).sum()) == count(0.2, w["fc2"].numel())
    rest = ["conv1", "conv2", "fc1"]
    total = sum(w[n].numel() for n in rest)
    assert sum(int((w[n] == 0).sum()) for n in rest) == count(0.9, total)


@pytest.mark.parametrize("optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.Adam(p, lr=1e-2),
])
def test_mask_hook_keeps_zeros_through_optimizer_steps(optimizer):
    model = MLP()
    report = prune_(model, MagnitudeConfig(sparsity=0.7, scope="global"))
    zero_before = {n: (w == 0) for n, w in _weights(model, ["fc1", "fc2", "fc3"]).items()}
    opt = optimizer(model.parameters())
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        report.after_step()
    for n, w in _weights(model, ["fc1", "fc2", "fc3"]).items():
        assert torch.equal(w == 0, zero_before[n]), n
        assert torch.equal(report.masks[n], ~zero_before[n])
        # +0.0 everywhere (a negative weight times 0 would be -0.0): the model in memory is bit-identical to
        # the one a saved artifact restores, whose decoded zeros are +0.0
        assert not torch.signbit(w[w == 0]).any(), n


def test_mask_hook_keeps_the_float_weight_behind_qat_at_zero():
    """QAT trains the float weight behind the fake quantizer: the hook masks that tensor, not a decoded copy."""
    from torchslim.quantize import FinetuneConfig, QATConfig, quantize_

    model = MLP()
    report = prune_(model, MagnitudeConfig(sparsity=0.7, scope="global"))
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))

    def finetune(m, epochs, lr):
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
            report.after_step()

    quantize_(model, QATConfig(bits=4, finetune=FinetuneConfig(epochs=1, lr=1e-2)), finetune=finetune,
              calibration=[torch.randn(16, 64)])
    for name in ("fc1", "fc2", "fc3"):  # converted to 4-bit codes after the fine-tune: decoded, the zeros are there
        decoded = model.get_submodule(name).weight
        assert torch.equal(decoded[~report.masks[name]], torch.zeros(int((~report.masks[name]).sum()))), name


def test_without_the_hook_training_revives_pruned_weights():
    model = MLP()
    report = prune_(model, MagnitudeConfig(sparsity=0.7))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(8, 64)), torch.randint(0, 10, (8,))).backward()
    opt.step()
    assert (model.fc1.weight[~report.masks["fc1"]] != 0).any()
    apply_masks_(model, report.masks)
    assert (model.fc1.weight[~report.masks["fc1"]] == 0).all()
    hook = mask_hook(model, report.masks)
    model.fc1.weight.data += 1.0
    hook()
    assert int((model.fc1.weight == 0).sum()) == count(0.7, model.fc1.weight.numel())


def test_polynomial_schedule_with_finetune_between_steps():
    model = MLP()
    seen, steps_seen = [], []

    def finetune(m, epochs, after_step, step, steps):
        w = m.fc1.weight
        seen.append((epochs, int((w == 0).sum()) / w.numel()))
        steps_seen.append((step, steps))
        m.fc1.weight.data += 0.5  # a "training" step that touches pruned weights
        after_step()

    cfg = MagnitudeConfig(sparsity=0.8, schedule=Schedule("polynomial", 4), finetune=Finetune(epochs=8, lr=0.01))
    prune_(model, cfg, finetune=finetune)
    assert [e for e, _ in seen] == [2, 2, 2, 2]
    assert steps_seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    expected = [count(s, model.fc1.weight.numel()) / model.fc1.weight.numel() for s in (0.4625, 0.7, 0.7875, 0.8)]
    assert [s for _, s in seen] == pytest.approx(expected)
    assert int((model.fc1.weight == 0).sum()) == count(0.8, model.fc1.weight.numel())


def test_finetune_config_without_callable_is_an_error():
    with pytest.raises(ValueError, match="finetune"):
        prune_(MLP(), MagnitudeConfig(sparsity=0.5, finetune=Finetune(epochs=1, lr=0.1)))


def test_sparsity_that_empties_a_layer_is_an_error():
    model = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 1))  # the last layer has one weight
    with pytest.raises(ConfigError) as err:
        prune_(model, MagnitudeConfig(sparsity=0.6))
    assert err.value.field == "sparsity" and "layer(s) 2;" in str(err.value)
    with pytest.raises(ConfigError) as err:
        prune_(model, MagnitudeConfig(sparsity=0.1, overrides={"2": 0.9}))
    assert err.value.field == "overrides.2"


def test_global_threshold_that_empties_a_layer_is_an_error():
    model = MLP()
    with torch.no_grad():
        model.fc3.weight.mul_(1e-6)  # far below every other weight
    with pytest.raises(ConfigError) as err:
        prune_(model, MagnitudeConfig(sparsity=0.9, scope="global"))
    assert err.value.field == "sparsity" and "fc3" in str(err.value)


def _two_scales() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 1, bias=False), nn.Linear(1, 4, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(100.0)
        model[1].weight.copy_(torch.tensor([[3.0], [1.0], [4.0], [2.0]]) * 1e-5)
    return model


def test_lamp_scope_ranks_across_layers_by_scale_free_scores():
    """LAMP: w² over the sum of w² of the layer's weights at least as large. Layer 0's four equal weights score
    1/4, 1/3, 1/2, 1 (ties by position); layer 1's 1, 2, 3, 4 (times 1e-5: its scale does not matter) score 1/30,
    4/29, 9/25, 1. Half of the eight go: layer 1's 1/30 and 4/29, layer 0's 1/4 and 1/3; one |w| threshold would
    have emptied layer 1."""
    model = _two_scales()
    prune_(model, MagnitudeConfig(sparsity=0.5, scope="lamp"))
    assert model[0].weight.flatten().tolist() == [0.0, 0.0, 100.0, 100.0]
    assert (model[1].weight.flatten() != 0).tolist() == [True, False, True, False]  # 3 and 4 kept
    with pytest.raises(ConfigError, match=r"would zero every weight of layer\(s\) 1;"):
        prune_(_two_scales(), MagnitudeConfig(sparsity=0.5, scope="global"))


def test_unmatched_ignore_is_an_error():
    with pytest.raises(ConfigError) as err:
        prune_(MLP(), MagnitudeConfig(sparsity=0.5, ignore=["classifier"]))
    assert err.value.field == "ignore[0]"


def test_mask_hook_follows_a_model_getter_and_reports_a_skipped_layer_once():
    import copy

    model = MLP()
    report = prune_(model, MagnitudeConfig(sparsity=0.5))
    current, logged = {"model": model}, []
    hook = mask_hook(lambda: current["model"], report.masks, log=logged.append)
    replaced = copy.deepcopy(model).double()  # e.g. a reloaded model, in another dtype
    replaced.fc3 = nn.Linear(100, 5).double()  # a layer a later stage swapped for one of another shape
    with torch.no_grad():
        for p in replaced.parameters():
            p.add_(1.0)  # training revived the pruned weights
    current["model"] = replaced
    hook()
    hook()
    assert int((replaced.fc1.weight == 0).sum()) == count(0.5, replaced.fc1.weight.numel())
    assert torch.equal(replaced.fc2.weight != 0, report.masks["fc2"])
    assert not (replaced.fc3.weight == 0).any()
    assert len(logged) == 1 and "'fc3'" in logged[0]


class _SeqLSTM(nn.Module):
    """(N, 6, 8) -> a 2-layer bidirectional LSTM (or a GRU cell stepped by the model) -> head."""

    def __init__(self, cell: bool = False):
        super().__init__()
        self.cell = cell
        self.lstm = nn.GRUCell(8, 20) if cell else nn.LSTM(8, 10, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(20, 3)

    def forward(self, x):
        if not self.cell:
            return self.head(self.lstm(x)[0].mean(1))
        state = x.new_zeros(x.shape[0], 20)
        for t in range(x.shape[1]):
            state = self.lstm(x[:, t], state)
        return self.head(state)


@pytest.mark.parametrize("cell", [False, True], ids=["lstm", "gru-cell"])
def test_a_recurrent_layer_loses_its_smallest_weights_across_its_matrices_and_keeps_them_at_zero(tmp_path, cell):
    torch.manual_seed(0)
    model = _SeqLSTM(cell)
    matrices = {n: p.detach().clone() for n, p in model.lstm.named_parameters() if n.startswith("weight_")}
    biases = {n: p.detach().clone() for n, p in model.lstm.named_parameters() if n.startswith("bias_")}
    report = prune_(model, MagnitudeConfig(sparsity=0.6, scope="layer"))
    assert [layer.name for layer in report.layers] == ["lstm", "head"] and "lstm" not in report.unpruned
    joined = torch.cat([m.abs().flatten() for m in matrices.values()])
    k = count(0.6, joined.numel())
    threshold = joined.sort().values[k - 1]  # the k-th smallest |w| of all its matrices together, by hand
    for name, before in matrices.items():
        after = getattr(model.lstm, name).detach()
        torch.testing.assert_close(after == 0, before.abs() <= threshold)  # no ties in random floats
    assert all(torch.equal(getattr(model.lstm, n), b) for n, b in biases.items())  # biases untouched
    assert report.layers[0].nonzero_after == joined.numel() - k

    x, y = torch.randn(12, 6, 8), torch.randint(0, 3, (12,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        report.after_step()
    for name, before in matrices.items():
        after = getattr(model.lstm, name).detach()
        assert bool((after[before.abs() <= threshold] == 0).all()) and bool((after[before.abs() > threshold] != 0).any())

    from torchslim.artifact import save_artifact
    from torchslim.artifact._inspect import describe_artifact

    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_magnitude:_SeqLSTM"})
    rows = {row["name"]: row for row in describe_artifact(path)["layers"]}
    for name in matrices:  # inspect gives each matrix its own row, with its sparsity
        zeros = float((getattr(model.lstm, name) == 0).float().mean())
        assert rows[f"lstm.{name}"]["sparsity"] == pytest.approx(zeros) and zeros > 0.3


def test_attention_in_projection_is_pruned_as_a_layer_and_deploys_as_multihead_attention(tmp_path):
    """nn.MultiheadAttention's in-projection (a bare parameter, the block's largest matrix) is pruned by magnitude
    as a Linear of its own; the pruned model saves, reloads with the same outputs, and deploys as
    nn.MultiheadAttention again with the zeros in place."""
    from torchslim.artifact import load_artifact, save_artifact
    from torchslim.prune.sensitivity import _layer_names
    from torchslim.quantize.deploy import decode_for_inference_

    torch.manual_seed(0)
    model = TransformerClassifier().eval()
    x = torch.randn(5, 7, 6)
    attention = {n: m.in_proj_weight.detach().clone() for n, m in model.named_modules()
                 if isinstance(m, nn.MultiheadAttention)}
    assert len(attention) == 2
    names = _layer_names(model, MagnitudeConfig(sparsity=0.5), None)
    assert {f"{n}.in_proj" for n in attention} <= set(names)  # the sensitivity analysis tries it alone too

    report = prune_(model, MagnitudeConfig(sparsity=0.5, overrides={"encoder.layers.1.self_attn.in_proj": 0.8}))
    assert not any("self_attn" in name for name in report.unpruned)
    modules = dict(model.named_modules())
    for name, before in attention.items():
        sparsity = 0.8 if name.startswith("encoder.layers.1") else 0.5
        k = count(sparsity, before.numel())
        threshold = before.abs().flatten().sort().values[k - 1]  # the k-th smallest |w|, by hand
        after = modules[f"{name}.in_proj"].weight.detach()
        torch.testing.assert_close(after == 0, before.abs() <= threshold)
        torch.testing.assert_close(after[after != 0], before[before.abs() > threshold])  # the rest untouched
        assert report.layer(f"{name}.in_proj").nonzero_after == before.numel() - k
    expected = model(x)

    path = save_artifact(model, tmp_path / "a", architecture={"module": "prune.models:TransformerClassifier"})
    reloaded, _ = load_artifact(path, model=TransformerClassifier())
    torch.testing.assert_close(reloaded.eval()(x), expected)
    served = decode_for_inference_(reloaded)
    attn = served.encoder.layers[1].self_attn
    assert type(attn) is nn.MultiheadAttention  # torch's fused kernels again
    assert int((attn.in_proj_weight == 0).sum()) == count(0.8, attention["encoder.layers.1.self_attn"].numel())
    torch.testing.assert_close(served(x), expected)


def test_cross_attention_keeps_its_projections_whole_and_says_so():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.head = nn.Linear(6, 8), nn.Linear(8, 3)
            self.attn = nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)

        def forward(self, x):
            return self.head(self.attn(self.q(x), x, x)[0].mean(1))

    model = Cross()
    before = [p.detach().clone() for p in (model.attn.q_proj_weight, model.attn.k_proj_weight)]
    report = prune_(model, MagnitudeConfig(sparsity=0.5))
    assert sorted(layer.name for layer in report.layers) == ["attn.out_proj", "head", "q"]
    assert report.unpruned == {
        "attn": "attention with kdim/vdim, add_bias_kv or add_zero_attn: its in-projection is kept whole"}
    assert torch.equal(model.attn.q_proj_weight, before[0]) and torch.equal(model.attn.k_proj_weight, before[1])


def test_inspect_shows_a_float_attentions_in_projection_as_its_own_row(tmp_path):
    """Stored unprojected (no pruning or quantization made it a Linear), the in-projection is a row of its shape
    and sparsity, not folded into one row with its bias's shape."""
    from torchslim.artifact import save_artifact
    from torchslim.artifact._inspect import describe_artifact

    torch.manual_seed(0)
    model = TransformerClassifier()
    with torch.no_grad():
        model.encoder.layers[0].self_attn.in_proj_weight[:12] = 0  # 12 of its 48 rows
    path = save_artifact(model, tmp_path / "a", architecture={"module": "prune.models:TransformerClassifier"})
    rows = {row["name"]: row for row in describe_artifact(path)["layers"]}
    row = rows["encoder.layers.0.self_attn.in_proj_weight"]
    assert row["shape"] == [48, 16] and row["sparsity"] == pytest.approx(0.25)
    assert rows["encoder.layers.1.self_attn.in_proj_weight"]["sparsity"] == 0.0
