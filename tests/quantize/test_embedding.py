"""Weight-only and k-means quantization store embedding tables too; the int8 methods keep them float."""

import pytest
import torch
from torch import nn

from torchslim.artifact import save_artifact
from torchslim.quantize import KMeansConfig, QuantizedLayer, StaticConfig, WeightOnlyConfig, quantize_
from torchslim.quantize.deploy import decode_for_inference_


class Bag(nn.Module):
    """Token ids -> embedding (row 0 is padding) -> mean -> Linear."""

    def __init__(self, max_norm=None):
        super().__init__()
        self.emb = nn.Embedding(50, 16, padding_idx=0, max_norm=max_norm)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.emb(x.long()).mean(1))


def _ids(n=8):
    torch.manual_seed(1)
    x = torch.randint(1, 50, (n, 6))
    x[:, -2:] = 0  # padded
    return x


def _reloaded(model, path):
    """load_artifact's rebuild steps for a model no registry names (Bag lives in the tests)."""
    from torchslim.artifact._format import _decode_state, _open
    from torchslim.quantize._layout import rebuild_quantized_layers_

    manifest, data, _ = _open(path)
    rebuilt = Bag().eval()
    rebuild_quantized_layers_(rebuilt, manifest["quantization"]["layers"])
    rebuilt.load_state_dict(_decode_state(path, manifest, data))
    return rebuilt


@pytest.mark.parametrize("config, values", [(KMeansConfig(bits=3), 8), (WeightOnlyConfig(bits=4), None)])
def test_an_embedding_table_is_stored_in_few_bits_and_looked_up_as_before(tmp_path, config, values):
    torch.manual_seed(0)
    model = Bag().eval()
    report = quantize_(model, config)
    assert set(report.layers) == {"emb", "fc"} and "emb" not in report.float_layers
    layer = model.emb
    assert isinstance(layer, QuantizedLayer) and layer.kind == "Embedding"
    table = layer.weight.detach()
    if values is not None:  # a 3-bit codebook: at most 8 distinct values (0 among them)
        assert torch.unique(table).numel() <= values
    else:  # 4-bit per row: at most 16 levels in each row
        assert max(torch.unique(row).numel() for row in table) <= 16
    assert torch.equal(table[0], torch.zeros(16))  # the padding row quantizes to zeros
    x = _ids()
    with torch.no_grad():
        out = model(x)
        plain = Bag().eval()
        plain.load_state_dict({"emb.weight": table, "fc.weight": model.fc.weight, "fc.bias": model.fc.bias})
        torch.testing.assert_close(out, plain(x), rtol=0, atol=1e-6)  # a lookup in the decoded table
        path = save_artifact(model, tmp_path / "a", architecture={"name": "lenet300_100"})  # name unused
        assert torch.equal(_reloaded(model, path)(x), out)
        deployed = decode_for_inference_(_reloaded(model, path))
        assert type(deployed.emb) is nn.Embedding and deployed.emb.padding_idx == 0
        assert torch.equal(deployed(x), out)
    # 3- or 4-bit codes of (50 + 4) x 16 values (at most 432 bytes) against 3,456 bytes of floats, plus a codebook
    # or each row's scale and zero point (54 rows)
    assert report.weight_bytes_fp32 == 4 * 54 * 16 and report.weight_bytes_quantized <= 432 + 54 * 6


def test_int8_methods_and_max_norm_keep_the_table_float_and_say_why():
    torch.manual_seed(0)
    model = Bag().eval()
    x = _ids(32).float()
    report = quantize_(model, StaticConfig(bits=8), calibration=[(x, torch.zeros(32, dtype=torch.long))])
    assert report.float_layers["emb"] == "an embedding table: a lookup, no int8 kernel to run it"
    report = quantize_(Bag(max_norm=1.0).eval(), KMeansConfig(bits=4))
    assert report.float_layers == {"emb": "an embedding with max_norm: its lookup rescales the table in place"}
    assert report.layers == {"fc": 4}
