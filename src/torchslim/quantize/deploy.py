"""A quantized model made ready to serve in torch: plain layers wherever the arithmetic allows.

Weight-only and k-means layers compute with a float weight decoded from their codes; decoding it once into an
ordinary ``nn.Linear`` / ``nn.Conv*`` leaves nothing on the call path but torch's own layer (the wrapper's cache
check costs more per call than a small layer). Attention whose projections are plain again goes back to
``nn.MultiheadAttention`` and its fused kernels. Layers that quantize their inputs (static, dynamic and 8-bit
QAT int8, which ONNX Runtime executes) keep their activation quantizers: that is what they compute.
"""

from __future__ import annotations

from torch import nn

from torchslim.quantize.attention import unproject_attention_
from torchslim.quantize.modules import replace_with_float_

__all__ = ["decode_for_inference_"]


def decode_for_inference_(model: nn.Module) -> nn.Module:
    """Replace, in place, every QuantizedLayer without an activation quantizer (and every QuantizedRecurrent) by
    the plain float layer it computes as (holders of a tied weight tied again), and projected attention by
    ``nn.MultiheadAttention`` where it is plain again.

    Returns:
        ``model`` (in eval mode): outputs are unchanged; the stored codes are gone from it, so save the artifact
        from the model as loaded by ``load_artifact``, not from this one.
    """
    replace_with_float_(model, lambda layer: layer.input_quant is None)
    unproject_attention_(model)
    return model.eval()
