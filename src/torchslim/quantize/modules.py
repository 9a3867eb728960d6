"""Layers whose weight comes from a quantized source: packed integers, a codebook, or fake quantization.

QuantizedLayer keeps the Linear/Conv arithmetic and asks ``weight_source()`` for the float weight, so one
layer class serves weight-only, k-means and QAT; ``input_quant`` optionally fake-quantizes activations.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from torchslim._recurrent import recurrent_weights
from torchslim.quantize.granularity import Granularity, from_blocks, to_blocks
from torchslim.quantize.packing import pack, unpack
from torchslim.quantize.primitives import fake_quantize, fake_quantize_tensor, qparams_from_range, quantize_tensor


class PackedWeight(nn.Module):
    """Integer weight: packed codes (uint8 bitstream) + per-block scale and zero point."""

    def __init__(self, weight: torch.Tensor, bits: int, granularity: Granularity, symmetric: bool = False,
                 reduce_range: bool = False):
        super().__init__()
        qt = quantize_tensor(weight, bits, granularity, symmetric, reduce_range)
        self.bits, self.granularity, self.shape = bits, granularity, tuple(weight.shape)
        self.register_buffer("packed", pack(qt.codes, bits))  # (ceil(numel*bits/8),) uint8
        self.register_buffer("scale", qt.scale)  # (blocks,)
        self.register_buffer("zero_point", qt.zero_point.to(torch.uint8))  # (blocks,)

    def codes(self) -> torch.Tensor:
        """Unpacked codes, uint8, weight shape."""
        numel = int(torch.Size(self.shape).numel())
        return unpack(self.packed, self.bits, numel).reshape(self.shape)

    def forward(self) -> torch.Tensor:
        blocks = to_blocks(self.codes(), self.granularity).float()  # (B, L)
        w = (blocks - self.zero_point.float()[:, None]) * self.scale[:, None]
        return from_blocks(w, torch.Size(self.shape), self.granularity)


class CodebookWeight(nn.Module):
    """Shared weights: weight = codebook[indices]; entry 0 of the codebook is fixed at 0.

    The trainable parameter holds the 2^bits - 1 free centroids; autograd's backward of the gather sums
    the gradients of all weights that share a centroid into it (Deep Compression's centroid fine-tuning).
    """

    def __init__(self, centroids: torch.Tensor, indices: torch.Tensor, bits: int):
        super().__init__()
        self.bits, self.shape = bits, tuple(indices.shape)
        self.centroids = nn.Parameter(centroids.float())  # (2^bits - 1,)
        self.register_buffer("packed", pack(indices, bits))  # indices into [0, *centroids]

    def indices(self) -> torch.Tensor:
        numel = int(torch.Size(self.shape).numel())
        return unpack(self.packed, self.bits, numel).reshape(self.shape)

    def codebook(self) -> torch.Tensor:
        """(2^bits,) values: 0 followed by the centroids."""
        return torch.cat([self.centroids.new_zeros(1), self.centroids])

    def forward(self) -> torch.Tensor:
        return self.codebook()[self.indices().long()]


class FakeQuantWeight(nn.Module):
    """Float weight (trainable) seen through quantize→dequantize with a straight-through gradient."""

    def __init__(self, weight: torch.Tensor, bits: int, granularity: Granularity, symmetric: bool,
                 reduce_range: bool = False):
        super().__init__()
        self.bits, self.granularity, self.symmetric, self.reduce_range = bits, granularity, symmetric, reduce_range
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self) -> torch.Tensor:
        return fake_quantize_tensor(self.weight, self.bits, self.granularity, self.symmetric, self.reduce_range)


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric fake quantization of activations.

    mode "static": fixed range (set from calibration, or tracked as a running min/max while training);
    mode "dynamic": range from each batch, as ONNX Runtime's dynamic quantization does at run time.
    """

    def __init__(self, bits: int = 8, mode: str = "static", momentum: float = 0.1):
        super().__init__()
        self.bits, self.mode, self.momentum = bits, mode, momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    def set_range(self, lo: float, hi: float) -> None:
        self.lo.fill_(lo), self.hi.fill_(hi), self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dynamic":
            lo, hi = x.detach().min(), x.detach().max()
        else:
            if self.training:  # running range for QAT
                lo, hi = x.detach().min(), x.detach().max()
                if bool(self.initialized):
                    lo = torch.lerp(self.lo, lo, self.momentum)
                    hi = torch.lerp(self.hi, hi, self.momentum)
                self.set_range(float(lo), float(hi))
            if not bool(self.initialized):
                return x
            lo, hi = self.lo, self.hi
        scale, zp = qparams_from_range(lo, hi, self.bits)
        return fake_quantize(x, scale, zp, self.bits)


_KINDS = {cls.__name__: cls for cls in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                        nn.Embedding)}
_CONV = {"Conv1d": F.conv1d, "Conv2d": F.conv2d, "ConvTranspose1d": F.conv_transpose1d,
         "ConvTranspose2d": F.conv_transpose2d}


def layer_kind(layer: nn.Module) -> str:
    """``Linear``, ``Conv1d``, ``Conv2d``, ``ConvTranspose1d``, ``ConvTranspose2d`` or ``Embedding`` by isinstance,
    so subclasses (e.g. attention's out_proj, a NonDynamicallyQuantizableLinear) compute like their base class."""
    for name, cls in _KINDS.items():
        if isinstance(layer, cls):
            return name
    raise TypeError(f"cannot quantize a {type(layer).__name__}; only {', '.join(_KINDS)}")


class QuantizedLayer(nn.Module):
    """Linear / Conv1d / Conv2d / Embedding whose weight comes from ``weight_source()``.

    Args:
        layer: the float layer being replaced (its bias and conv settings are kept).
        weight_source: module returning the weight tensor, shaped like ``layer.weight``.
        input_quant: optional activation fake quantizer applied to the input.
    """

    def __init__(self, layer: nn.Module, weight_source: nn.Module, input_quant: nn.Module | None = None):
        super().__init__()
        self.kind = layer_kind(layer)
        self._inference_weight: torch.Tensor | None = None
        self._inference_key: tuple | None = None
        self.weight_source = weight_source
        self.input_quant = input_quant
        bias = getattr(layer, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        if self.kind == "Embedding":  # (max_norm, which rescales the table at lookup, is never selected)
            self.embedding_args = dict(padding_idx=layer.padding_idx, scale_grad_by_freq=layer.scale_grad_by_freq,
                                       sparse=layer.sparse)
        elif self.kind != "Linear":
            if layer.padding_mode != "zeros":  # quantizable_layers never selects these
                raise ValueError(f"padding_mode {layer.padding_mode!r} is not supported")
            self.conv_args = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                                  groups=layer.groups)
            if layer.transposed:
                self.conv_args["output_padding"] = layer.output_padding

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_source()

    def _drop_cache(self) -> None:
        self._inference_weight, self._inference_key = None, None

    def _source_key(self) -> tuple:
        """Identity and version counter of every tensor the source decodes from: an in-place edit bumps one."""
        tensors = list(self.weight_source.parameters()) + list(self.weight_source.buffers())
        return (id(self.weight_source),) + tuple((id(t), t._version) for t in tensors)

    def _current_weight(self) -> torch.Tensor:
        """The dequantized weight. In eval mode without autograd it is decoded once and reused while the source's
        tensors stay the same, so a deployed weight-only / k-means model runs at float speed."""
        if self.training or torch.is_grad_enabled():
            self._drop_cache()
            return self.weight_source()
        key = self._source_key()
        if self._inference_weight is None or self._inference_key != key:
            self._inference_weight, self._inference_key = self.weight_source(), key
        return self._inference_weight

    def __setattr__(self, name: str, value) -> None:
        if name == "weight_source":  # a new source decodes to a new weight
            self._drop_cache()
        super().__setattr__(name, value)

    def _apply(self, fn, recurse: bool = True):
        self._drop_cache()  # .to(device), .double(), ...: the decoded copy would keep the old device/dtype
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "QuantizedLayer":
        self._drop_cache()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._drop_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        w = self._current_weight()
        if self.kind == "Linear":
            return F.linear(x, w, self.bias)
        if self.kind == "Embedding":
            return F.embedding(x, w, **self.embedding_args)
        return _CONV[self.kind](x, w, self.bias, **self.conv_args)

    def to_float(self) -> nn.Module:
        """A plain float layer with the current (dequantized) weight, e.g. for ONNX export."""
        w = self.weight_source().detach()
        if self.kind == "Embedding":
            layer = nn.Embedding(w.shape[0], w.shape[1], **self.embedding_args)
        elif self.kind == "Linear":
            layer = nn.Linear(w.shape[1], w.shape[0], bias=self.bias is not None)
        else:  # weight (out, in / groups, *k); transposed (in, out / groups, *k)
            channels = (w.shape[1] * self.conv_args["groups"], w.shape[0])
            if self.kind.startswith("ConvTranspose"):
                channels = channels[::-1]
            layer = _KINDS[self.kind](*channels, w.shape[2:], bias=self.bias is not None, **self.conv_args)
        layer = layer.to(device=w.device)
        with torch.no_grad():
            layer.weight.copy_(w)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer


class QuantizedRecurrent(nn.Module):
    """An RNN / LSTM / GRU layer or cell whose weight matrices each come from a source (packed codes, a codebook);
    its biases stay float. Before each call the decoded matrices are set on the recurrent module (plain attributes,
    in no state dict), so torch's own recurrent kernel runs them.

    Args:
        rnn: the float layer being replaced (taken over: its weight Parameters are removed from it).
        sources: ``{weight name: module returning that matrix}``, one per name of :func:`recurrent_weights`.
    """

    def __init__(self, rnn: nn.Module, sources: dict[str, nn.Module]):
        super().__init__()
        self.parameter_order = list(rnn._parameters)  # torch's, for to_float
        missing = set(sources) ^ set(recurrent_weights(rnn))
        if missing:
            raise ValueError(f"a {type(rnn).__name__} has no weight {sorted(missing)[0]} to decode, or it is left out")
        self.kind = type(rnn).__name__
        for name in sources:
            del rnn._parameters[name]
            setattr(rnn, name, None)  # no reference to the float matrix is left behind
        self.rnn = rnn
        self.weight_sources = nn.ModuleDict(sources)

    def forward(self, *args, **kwargs):
        try:
            for name, source in self.weight_sources.items():
                setattr(self.rnn, name, source())
            return self.rnn(*args, **kwargs)
        finally:  # the decoded matrices go with the call (a copy of the model would otherwise copy autograd's)
            for name in self.weight_sources:
                setattr(self.rnn, name, None)

    def to_float(self) -> nn.Module:
        """The plain recurrent layer with the current (decoded) weights, its parameters in torch's order."""
        rnn = copy.deepcopy(self.rnn)
        for name, source in self.weight_sources.items():
            setattr(rnn, name, nn.Parameter(source().detach().clone()))
        rnn._parameters = {name: rnn._parameters[name] for name in self.parameter_order}
        return rnn


def weight_sources_of(module: nn.Module) -> list[nn.Module]:
    """The modules a quantized layer decodes its weights from: its ``weight_source``, or a recurrent layer's."""
    if isinstance(module, QuantizedRecurrent):
        return list(module.weight_sources.values())
    source = getattr(module, "weight_source", None)
    return [source] if isinstance(source, nn.Module) else []


def stored_bytes(module: nn.Module) -> int:
    """Bytes of every tensor ``module`` stores (parameters and buffers): what an artifact holds for it."""
    return sum(t.numel() * t.element_size() for t in list(module.buffers()) + list(module.parameters()))


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every QuantizedLayer of ``model`` (in place) by its float equivalent; returns model."""
    return replace_with_float_(model, lambda module: True)


def replace_with_float_(model: nn.Module, select) -> nn.Module:
    """Replace (in place) each QuantizedLayer ``select(layer)`` accepts, and every QuantizedRecurrent, by its float
    equivalent; layers that decode one weight source (a tied weight) get one float Parameter, tied again.
    Returns ``model``."""
    from torchslim.quantize._select import set_submodule

    decoded: dict[int, nn.Parameter] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedRecurrent):
            set_submodule(model, name, module.to_float())
        elif isinstance(module, QuantizedLayer) and select(module):
            layer = module.to_float()
            layer.weight = decoded.setdefault(id(module.weight_source), layer.weight)
            set_submodule(model, name, layer)
    return model
