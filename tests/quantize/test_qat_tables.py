"""QAT below 8 bits ends as packed codes, so it stores (and trains through fake quantizers) what weight-only
stores: embedding tables, a tied head, recurrent matrices and transposed convolutions, not only Linear and Conv."""

import torch
from torch import nn

from torchslim.artifact import load_artifact, save_artifact
from torchslim.quantize import FinetuneConfig, PackedWeight, QATConfig, quantize_
from torchslim.quantize.modules import FakeQuantWeight, QuantizedLayer, QuantizedRecurrent


class Mixed(nn.Module):
    """Token ids -> embedding -> GRU -> transposed conv over time -> head tied to the embedding -> classes."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.rnn = nn.GRU(16, 16, batch_first=True)
        self.up = nn.ConvTranspose1d(16, 16, 2, stride=2)
        self.head = nn.Linear(16, 20, bias=False)
        self.head.weight = self.embed.weight
        self.out = nn.Linear(20, 3)

    def forward(self, x):  # (N, T) ids
        h, _ = self.rnn(self.embed(x))
        h = self.up(h.transpose(1, 2)).mean(2)  # (N, 16)
        return self.out(self.head(h))


def test_qat_below_8_bits_trains_and_stores_every_layer_weight_only_stores(tmp_path):
    torch.manual_seed(0)
    model, x = Mixed(), torch.randint(0, 20, (32, 6))
    y = torch.randint(0, 3, (32,))
    float_model = Mixed()
    float_model.load_state_dict(model.state_dict())
    nn.functional.cross_entropy(float_model(x), y).backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}

    def finetune(m, epochs, lr):  # what the run's loop does: every parameter trains
        seen["sources"] = {n: type(getattr(mod, "weight_source", None)).__name__ for n, mod in m.named_modules()
                           if isinstance(mod, QuantizedLayer)}
        seen["rnn"] = isinstance(m.rnn, QuantizedRecurrent) and all(
            isinstance(s, FakeQuantWeight) for s in m.rnn.weight_sources.values())
        seen["tied"] = m.head.weight_source is m.embed.weight_source
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        for epoch in range(epochs):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            if epoch == 0:
                seen["grad"] = float(m.embed.weight_source.weight.grad.abs().max())
            opt.step()

    report = quantize_(model, QATConfig(bits=4, finetune=FinetuneConfig(epochs=5, lr=0.5)), finetune=finetune)
    assert seen["sources"] == dict.fromkeys(["embed", "up", "head", "out"], "FakeQuantWeight") and seen["rnn"]
    assert seen["tied"]  # one fake quantizer for the shared table
    assert set(report.layers) == {"embed", "rnn", "up", "head", "out"} and report.float_layers == {}
    assert model.head.weight_source is model.embed.weight_source and isinstance(model.embed.weight_source,
                                                                                PackedWeight)
    # the straight-through gradient reaches the table as the float model's does (first step: same weights), and
    # the table trained through its fake quantizer: its codes are not those of the untrained table
    assert abs(seen["grad"] / float(float_model.embed.weight.grad.abs().max()) - 1) < 0.5
    untrained = PackedWeight(before["embed.weight"], 4, model.embed.weight_source.granularity, symmetric=True)
    assert bool((model.embed.weight_source.codes() != untrained.codes()).any())
    with torch.no_grad():
        expected = model(x)
    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_qat_tables:Mixed"})
    reloaded, _ = load_artifact(path, model=Mixed())
    torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=1e-6)
