"""torchslim: model compression for PyTorch driven by a domain definition."""

__version__ = "0.1.0"
