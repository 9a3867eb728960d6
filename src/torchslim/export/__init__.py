"""ONNX export and ONNX Runtime execution. onnx/onnxruntime are imported inside the functions that use them."""

from torchslim.export.cpu import cpu_int8_features
from torchslim.export.onnx_export import export_onnx, to_onnx_proto
from torchslim.export.runtime import OrtSession, optimized_op_counts, quantized_kernels

__all__ = ["cpu_int8_features", "export_onnx", "to_onnx_proto", "OrtSession", "optimized_op_counts",
           "quantized_kernels"]
