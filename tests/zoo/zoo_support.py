"""Training the zoo models and applying each compression method, shared by tests/zoo and
benchmarks/architectures.py (one definition of what each method's settings are)."""

from __future__ import annotations

import torch
from torch import nn

import zoo_models
from torchslim.prune import ActivationConfig, MagnitudeConfig, StructuredConfig, prune_
from torchslim.prune.config import Finetune
from torchslim.quantize import (CalibrationConfig, DynamicConfig, FinetuneConfig, KMeansConfig, QATConfig,
                                StaticConfig, WeightOnlyConfig, quantize_)
from torchslim.train import TrainConfig, fit

INPUT_SHAPE = (1, 8, 8)

# model: (factory kwargs, training epochs, lr); batch 32
ZOO = {
    "resnet": ({}, 6, 3e-3),
    "conv1d": ({}, 6, 3e-3),
    "transformer": ({"layers": 1}, 8, 5e-3),
    "tokens": ({}, 8, 1e-2),
}

# models too big to run every method in the unit tests (tests/zoo/test_encoder_int8.py runs dynamic int8 on it;
# benchmarks/architectures.py runs every method)
LARGE = {
    "encoder": ({}, 8, 5e-4),
}
# models benchmarks/architectures.py runs every method on, left out of the unit tests' time (their mechanics are
# tested on their own: tests/quantize/test_recurrent.py)
EXTRA = {
    "lstm": ({}, 8, 5e-3),
}
MODELS = {**ZOO, **LARGE, **EXTRA}

QUANT = ("static", "dynamic", "weight", "kmeans", "qat")
PRUNE = ("magnitude", "activation", "structured")
INT8_ORT = ("static", "dynamic", "qat")  # methods that store an int8 model for ONNX Runtime


def method_config(method: str):
    """The config each method runs with in the zoo."""
    return {
        "static": StaticConfig(calibration=CalibrationConfig(batches=4)),
        "dynamic": DynamicConfig(),
        "weight": WeightOnlyConfig(bits=4, granularity="channel"),
        "kmeans": KMeansConfig(bits=4, finetune=FinetuneConfig(epochs=1, lr=1e-3)),
        "qat": QATConfig(bits=8, finetune=FinetuneConfig(epochs=1, lr=1e-4), calibration=CalibrationConfig(batches=4)),
        "magnitude": MagnitudeConfig(sparsity=0.6, scope="global", finetune=Finetune(epochs=1, lr=1e-3)),
        "activation": ActivationConfig(threshold=0.05),
        "structured": StructuredConfig(sparsity=0.5, finetune=Finetune(epochs=2, lr=1e-3)),
    }[method]


def architecture(name: str) -> dict:
    """How an artifact rebuilds the model: the factory in zoo_models.py and its kwargs."""
    return {"factory": f"zoo_models:build_{name}", "kwargs": MODELS[name][0]}


def train_model(name: str, splits, seed: int = 0) -> nn.Module:
    """The zoo model ``name`` trained on ``splits`` (best validation epoch), in eval mode."""
    kwargs, epochs, lr = MODELS[name]
    torch.manual_seed(seed)
    model = zoo_models.FACTORIES[name](**kwargs)
    fit(model, splits.train, splits.val, TrainConfig(epochs=epochs, lr=lr, batch_size=32), seed=seed)
    return model.cpu().eval()  # fit trains on the GPU when there is one; the tests compare on the CPU


def calibration_batches(splits, n: int = 4, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = splits.train.tensors
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(n)]


def apply_method(model: nn.Module, method: str, splits, seed: int = 0):
    """Compress ``model`` in place with ``method`` through the API; returns (the method's report, model)."""
    torch.manual_seed(seed)
    batches = calibration_batches(splits)
    config = method_config(method)

    def quant_finetune(m, epochs, lr):
        fit(m, splits.train, splits.val, TrainConfig(epochs=epochs, lr=lr, batch_size=32), seed=seed + 1)

    def prune_finetune(m, epochs, after_step, step, steps):
        fit(m, splits.train, splits.val, TrainConfig(epochs=epochs, lr=config.finetune.lr, batch_size=32),
            seed=seed + 1, after_step=after_step)

    if method in QUANT:
        report = quantize_(model, config, calibration=batches, finetune=quant_finetune)
    else:
        report = prune_(model, config, calibration=batches, finetune=prune_finetune)
    return report, model.cpu().eval()
