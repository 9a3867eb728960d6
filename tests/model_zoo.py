"""Small models shared by test folders (a module name no test folder uses)."""

from torch import nn


class TinyEncoder(nn.Module):
    """One-layer Transformer encoder classifier: attention (with its out_proj Linear subclass), FFN, head."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder, self.head = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), nn.Linear(16, 3)

    def forward(self, x):  # (N, T, 16)
        return self.head(self.encoder(x).mean(1))  # (N, 3)
