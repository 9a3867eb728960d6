import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from torchslim.prune import MagnitudeConfig, StructuredConfig, prune_, resize_to_state_dict_
from torchslim.prune.attention import PrunableMultiheadAttention

from .models import LeNet5, ResNetTiny, TransformerClassifier


def _train_a_little(model, x, classes):
    # non-trivial BatchNorm statistics and weights, so the reload is tested on more than the init
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), torch.randint(0, classes, (x.shape[0],))).backward()
        opt.step()


def _roundtrip(tmp_path, build, pruned, x):
    path = tmp_path / "pruned.safetensors"
    save_file(pruned.state_dict(), str(path))
    fresh = build()
    state = load_file(str(path))
    changed = resize_to_state_dict_(fresh, state)
    fresh.load_state_dict(state)  # strict
    pruned.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), pruned(x), rtol=0, atol=0)
    return fresh, changed


def test_residual_conv_net(tmp_path):
    model, x = ResNetTiny(), torch.randn(6, 1, 8, 8)
    _train_a_little(model, x, 10)
    prune_(model, StructuredConfig(sparsity=0.5), example_inputs=x)
    fresh, changed = _roundtrip(tmp_path, ResNetTiny, model, x)
    assert {"stem", "bn0", "conv_b", "bn_b", "side", "merge", "fc1", "fc2"} <= set(changed)
    assert (fresh.conv_b.groups, fresh.conv_b.in_channels, fresh.bn0.num_features) == (2, 8, 8)
    assert fresh.fc1.in_features == model.fc1.in_features


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_classifier(tmp_path, batch_first):
    model, x = TransformerClassifier(batch_first=batch_first), torch.randn(4, 5, 6)
    _train_a_little(model, x, 3)
    prune_(model, StructuredConfig(sparsity=0.5), example_inputs=x)
    fresh, changed = _roundtrip(tmp_path, lambda: TransformerClassifier(batch_first=batch_first), model, x)
    attn = fresh.encoder.layers[1].self_attn
    assert isinstance(attn, PrunableMultiheadAttention) and attn.num_heads == 2
    assert fresh.encoder.layers[0].linear1.out_features == 16
    assert "encoder.layers.0.self_attn" in changed and "embed" not in changed
    pad = torch.zeros(4, 5, dtype=torch.bool)
    pad[0, 3:] = True
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, pad), model(x, pad), rtol=0, atol=0)


def test_encoder_with_nested_tensor_path_reloads(tmp_path):
    # torch's default enable_nested_tensor=True: with a padding mask in eval mode the encoder would hand nested
    # tensors to its layers, which a converted attention does not take; the reload must switch that path off.
    build = lambda: TransformerClassifier(nested=True)  # noqa: E731
    model, x = build(), torch.randn(4, 5, 6)
    assert model.encoder.use_nested_tensor
    _train_a_little(model, x, 3)
    prune_(model, StructuredConfig(sparsity=0.5), example_inputs=x)
    fresh, changed = _roundtrip(tmp_path, build, model, x)
    assert "encoder.layers.1.self_attn" in changed
    assert not fresh.encoder.use_nested_tensor and not model.encoder.use_nested_tensor
    pad = torch.zeros(4, 5, dtype=torch.bool)
    pad[0, 3:] = True
    pad[2, 4:] = True
    fresh.eval()
    with torch.no_grad():
        out = fresh(x, pad)
        torch.testing.assert_close(out, model(x, pad), rtol=0, atol=0)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    unpruned = build().eval()
    assert resize_to_state_dict_(unpruned, unpruned.state_dict()) == []  # nothing pruned: the fast path stays
    assert unpruned.encoder.use_nested_tensor


def test_unpruned_shapes_are_left_alone(tmp_path):
    model = LeNet5()
    prune_(model, MagnitudeConfig(sparsity=0.5))
    _, changed = _roundtrip(tmp_path, LeNet5, model, torch.randn(2, 1, 8, 8))
    assert changed == []


def test_depthwise_conv_net(tmp_path):
    def build():
        return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=16), nn.BatchNorm2d(16),
                             nn.ReLU(), nn.Conv2d(16, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))

    model, x = build(), torch.randn(2, 1, 8, 8)
    prune_(model, StructuredConfig(sparsity=0.5), example_inputs=x)
    fresh, _ = _roundtrip(tmp_path, build, model, x)
    assert (fresh[2].groups, fresh[2].in_channels, fresh[2].out_channels, fresh[5].out_channels) == (8, 8, 8, 2)
    assert fresh[7].in_features == 2 * 4 * 4


def test_a_layer_scale_of_the_users_own_cut_with_its_channels_reloads(tmp_path):
    class Scaled(nn.Module):  # a residual block whose branch a learned per-channel scale multiplies
        def __init__(self):
            super().__init__()
            self.stem, self.branch = nn.Conv1d(1, 8, 3, padding=1), nn.Conv1d(8, 8, 3, padding=1)
            self.gamma = nn.Parameter(torch.linspace(0.1, 0.8, 8)[:, None])
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = self.stem(x)
            return self.head((h + self.gamma * self.branch(torch.relu(h))).mean(-1))

    model, x = Scaled(), torch.randn(2, 1, 6)
    report = prune_(model, StructuredConfig(sparsity=0.5), example_inputs=x)
    assert model.gamma.shape == (4, 1) and report.unpruned["gamma"].startswith("parameters of the model itself")
    fresh, _ = _roundtrip(tmp_path, Scaled, model, x)
    assert fresh.gamma.shape == (4, 1)


def test_prelu_and_an_embedding_added_to_pruned_channels_reload(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv1d(1, 8, 3, padding=1), nn.PReLU(8)
            self.fc, self.pos = nn.Linear(8, 12), nn.Embedding(4, 12)
            self.head = nn.Linear(12, 3)

        def forward(self, x):  # (N, 1, 4): the embedding of each position is added to fc's output
            h = self.fc(self.act(self.conv(x)).transpose(1, 2)) + self.pos(torch.arange(4))
            return self.head(torch.relu(h).mean(1))

    model, x = Net(), torch.randn(6, 1, 4)
    _train_a_little(model, x, 3)
    prune_(model, StructuredConfig(sparsity=0.5), example_inputs=x)
    assert (model.act.weight.numel(), model.pos.weight.shape) == (4, (4, 6))
    fresh, changed = _roundtrip(tmp_path, Net, model, x)
    assert {"act", "pos"} <= set(changed)
    assert (fresh.act.num_parameters, fresh.pos.embedding_dim, fresh.pos.num_embeddings) == (4, 6, 4)


def test_norms_without_a_weight_take_their_pruned_size_from_the_artifact(tmp_path):
    # an affine-free LayerNorm / GroupNorm stores no tensor, yet its size follows the channels it normalizes
    from torchslim.artifact import load_artifact, read_manifest, save_artifact

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gn = nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16, affine=False)
            self.fc, self.ln = nn.Linear(16, 32), nn.LayerNorm(32, elementwise_affine=False)
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            h = torch.relu(self.gn(self.conv(x))).mean((2, 3))
            return self.head(torch.relu(self.ln(self.fc(h))))

    model, x = Net(), torch.randn(6, 1, 5, 5)
    _train_a_little(model, x, 3)
    prune_(model, StructuredConfig(sparsity=0.5), example_inputs=x)
    assert (model.ln.normalized_shape, model.gn.num_channels) == ((16,), 8)
    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_resize:Net"})
    assert read_manifest(path)["structure"]["tensorless_norms"] == {"gn": [8], "ln": [16]}
    fresh, _ = load_artifact(path, model=Net())
    assert (fresh.ln.normalized_shape, fresh.gn.num_channels) == ((16,), 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
