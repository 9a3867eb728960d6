"""torchslim: model compression for PyTorch driven by a domain definition."""

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str):
    # ``torchslim.load`` imports torch and the artifact code only when first used: ``import torchslim`` stays light.
    if name == "load":
        from torchslim._load import load

        return load
    raise AttributeError(f"module 'torchslim' has no attribute {name!r}")
