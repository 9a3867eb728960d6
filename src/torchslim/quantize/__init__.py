"""Quantization: affine maths, packing, observers, and ``quantize_(model, config)`` for five methods.

Methods (recipe ``method`` key → config): static → StaticConfig, dynamic → DynamicConfig,
weight → WeightOnlyConfig, kmeans → KMeansConfig, qat → QATConfig. ONNX Runtime is imported only when a
method needs it.
"""

from torchslim.quantize.api import QuantReport, quantize_
from torchslim.quantize.codebook import cluster_weight, kmeans_1d
from torchslim.quantize.config import (CalibrationConfig, DynamicConfig, FinetuneConfig, KMeansConfig, QATConfig,
                                       StaticConfig, WeightOnlyConfig, config_from_mapping, config_to_mapping)
from torchslim.quantize.granularity import PerChannel, PerGroup, PerTensor
from torchslim.quantize.modules import (CodebookWeight, FakeQuantWeight, PackedWeight, QuantizedLayer,
                                        dequantize_model)
from torchslim.quantize.observers import MinMaxObserver, MSEObserver, PercentileObserver, make_observer
from torchslim.quantize.packing import pack, unpack
from torchslim.quantize.primitives import (QTensor, fake_quantize_tensor, quantize_tensor,
                                           sqnr_db)
from torchslim.quantize._fold import fold_conv_bn_

__all__ = [
    "QuantReport", "quantize_", "cluster_weight", "kmeans_1d", "CalibrationConfig", "DynamicConfig",
    "FinetuneConfig", "KMeansConfig", "QATConfig", "StaticConfig", "WeightOnlyConfig", "config_from_mapping",
    "config_to_mapping", "PerChannel", "PerGroup", "PerTensor", "CodebookWeight", "FakeQuantWeight", "PackedWeight",
    "QuantizedLayer", "dequantize_model", "MinMaxObserver", "MSEObserver", "PercentileObserver", "make_observer",
    "pack", "unpack", "QTensor", "fake_quantize_tensor", "quantize_tensor", "sqnr_db", "fold_conv_bn_",
]
