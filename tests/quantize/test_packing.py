import pytest
import torch

from torchslim._errors import ConfigError
from torchslim.quantize import pack, unpack


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("numel", [1, 7, 13, 1001])
def test_pack_round_trip_every_width(bits, numel):
    g = torch.Generator().manual_seed(bits * 1000 + numel)
    q = torch.randint(0, 2 ** bits, (numel,), generator=g, dtype=torch.uint8)
    packed = pack(q, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (numel * bits + 7) // 8
    assert torch.equal(unpack(packed, bits, numel), q)


def test_pack_layout_four_bits_two_per_byte():
    assert pack(torch.tensor([1, 2, 15, 0]), 4).tolist() == [0x21, 0x0F]
    assert pack(torch.tensor([3, 0, 1, 2]), 2).tolist() == [0b10010011]


def test_pack_rejects_out_of_range_codes_and_bad_bits():
    with pytest.raises(ValueError):
        pack(torch.tensor([0, 8]), 3)
    with pytest.raises(ConfigError) as err:
        pack(torch.tensor([0, 1]), 9)
    assert err.value.field == "bits"
    with pytest.raises(ValueError):
        unpack(torch.zeros(1, dtype=torch.uint8), 4, 3)
