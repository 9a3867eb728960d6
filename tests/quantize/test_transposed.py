"""Weight-only and k-means quantization store transposed convolutions too; the int8 methods keep them float."""

import pytest
import torch
from torch import nn

from torchslim.artifact import load_artifact, save_artifact
from torchslim.quantize import KMeansConfig, QuantizedLayer, StaticConfig, WeightOnlyConfig, quantize_
from torchslim.quantize.deploy import decode_for_inference_


class Upsampler(nn.Module):
    """Conv down, transposed convs up (stride, output padding, groups, dilation), a head."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 12, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1)
        self.up1d = nn.ConvTranspose1d(12, 6, 4, stride=2, padding=1, dilation=2, bias=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.up(torch.relu(self.down(x))))  # (N, 12, 8, 8)
        return self.head(torch.relu(self.up1d(h.mean(2))).mean(2))


@pytest.mark.parametrize("config, values", [(KMeansConfig(bits=3, finetune=None), 8), (WeightOnlyConfig(bits=4), None)])
def test_a_transposed_convolution_is_stored_in_few_bits_and_computes_as_before(tmp_path, config, values):
    torch.manual_seed(0)
    model, x = Upsampler().eval(), torch.rand(5, 1, 8, 8)
    float_weights = {n: model.get_submodule(n).weight.detach().clone() for n in ("up", "up1d")}
    report = quantize_(model, config)
    assert set(report.layers) == {"down", "up", "up1d", "head"} and not report.float_layers
    for name, before in float_weights.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, QuantizedLayer) and layer.kind == f"ConvTranspose{before.dim() - 2}d"
        w = layer.weight.detach()
        assert w.shape == before.shape and float((w - before).abs().max()) < 0.5 * float(before.abs().max())
        if values is not None:
            assert torch.unique(w).numel() <= values
    with torch.no_grad():
        expected = model(x)
        # the quantized layers compute what torch's own layers compute with the decoded weights
        up = nn.ConvTranspose2d(8, 12, 3, stride=2, padding=1, output_padding=1, groups=2).eval()
        up.load_state_dict({"weight": model.up.weight, "bias": model.up.bias})
        h = torch.relu(model.down(x))
        torch.testing.assert_close(model.up(h), up(h))

    path = save_artifact(model, tmp_path / "a", architecture={"module": "test_transposed:Upsampler"})
    loaded, _ = load_artifact(path, model=Upsampler())
    served = decode_for_inference_(loaded)
    assert type(served.up) is nn.ConvTranspose2d and type(served.up1d) is nn.ConvTranspose1d
    assert (served.up.output_padding, served.up.groups, served.up1d.dilation) == ((1, 1), 2, (2,))
    with torch.no_grad():
        torch.testing.assert_close(served(x), expected, rtol=0, atol=1e-6)


def test_static_int8_keeps_a_transposed_convolution_float_and_says_why():
    torch.manual_seed(0)
    model, x = Upsampler().eval(), torch.rand(16, 1, 8, 8)
    report = quantize_(model, StaticConfig(), calibration=[x])
    assert "up" not in report.layers and report.float_layers["up"] == "a transposed convolution"
