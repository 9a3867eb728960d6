"""torchslim: model compression for PyTorch driven by a domain definition."""

import os

# The same recipe and seed must give the same artifact. MKL (torch's CPU BLAS) may otherwise use fewer threads
# under load (dynamic threading) and pick kernels by memory alignment, which changed trained weights in the 6th
# decimal between two identical runs on a busy machine. Both are read when MKL first runs, so importing torchslim
# first is enough.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

__version__ = "0.1.0"
__all__ = ["__version__", "compress", "load"]


def __getattr__(name: str):
    # ``torchslim.load`` and ``compress`` import torch and the rest only when first used: ``import torchslim``
    # stays light.
    if name == "load":
        from torchslim._load import load

        return load
    if name == "compress":
        from torchslim.api import compress

        return compress
    raise AttributeError(f"module 'torchslim' has no attribute {name!r}")
