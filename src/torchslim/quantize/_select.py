"""Which layers a method touches: Linear/Conv modules, minus ``ignore``, with per-layer bits.

``ignore`` and ``overrides`` are resolved exactly as pruning resolves them (:class:`torchslim.prune._select.
LayerSelector`): a name or ``re:`` pattern applies to the module it names and to every layer inside it, and each
one must match some module of the model.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from torch import nn

from torchslim._errors import ConfigError
from torchslim._recurrent import RECURRENT, is_recurrent, recurrent_weights
from torchslim.prune._select import LayerSelector

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


# Layers only the methods that store weights (:data:`STORES_EMBEDDINGS`) replace: the int8 methods have no kernel for
# a lookup, a transposed convolution or a recurrent layer's gates here, but their weights store in codes as a
# Linear's do.
STORED_ONLY = (nn.Embedding, nn.ConvTranspose1d, nn.ConvTranspose2d, *RECURRENT)


def is_quantizable(module: nn.Module, embeddings: bool = False) -> bool:
    """A Linear/Conv1d/Conv2d the quantized layers can replace (convolutions only with zero padding); with
    ``embeddings``, an ``nn.Embedding`` (without ``max_norm``, which rescales the table in place at lookup), a
    transposed 1-D/2-D convolution or an RNN / LSTM / GRU layer or cell too."""
    if embeddings and type(module) is nn.Embedding:
        return module.max_norm is None
    if embeddings and type(module) in STORED_ONLY:
        return getattr(module, "padding_mode", "zeros") == "zeros"
    return isinstance(module, QUANTIZABLE) and getattr(module, "padding_mode", "zeros") == "zeros"


# Methods that store the layers of :data:`STORED_ONLY` too: the weight-only ones (packed codes, a codebook, and qat
# below 8 bits, which ends as packed codes) only change how a weight is stored, which a lookup table gains from as a
# Linear does; int8 methods need a kernel that computes in int8, and a lookup has none.
STORES_EMBEDDINGS = ("weight", "kmeans")


def covers_embeddings(config: Any) -> bool:
    """Whether a quantize config's method stores embedding tables (and the rest of :data:`STORED_ONLY`) too."""
    from torchslim.quantize.config import method_of

    method = method_of(config)
    return method in STORES_EMBEDDINGS or (method == "qat" and config.bits < 8)


def int8_recurrent_layers(model: nn.Module, ignore: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The recurrent layers dynamic int8 computes in int8, by qualified name: torch's ``nn.LSTM`` without
    ``proj_size`` (ONNX Runtime's DynamicQuantizeLSTM; it has no int8 kernel for GRU, RNN or a cell's loop)."""
    selector = LayerSelector(model, 0, ignore)
    return {name: m for name, m in model.named_modules()
            if type(m) is nn.LSTM and not m.proj_size and not selector.is_ignored(name)}


def _opaque_projections(model: nn.Module) -> set[str]:
    """The out-projections of the ``nn.MultiheadAttention`` modules left as they are (key/value sizes of their own,
    extra key/value biases): torch calls them through a functional kernel, so no quantized layer or calibration
    hook would see them; they stay float with their attention."""
    return {f"{name}.out_proj" if name else "out_proj" for name, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention)}


def quantizable_layers(model: nn.Module, ignore: Iterable[str] = (), embeddings: bool = False
                       ) -> dict[str, nn.Module]:
    """Quantizable modules by qualified name, skipping those ``ignore`` covers (ConfigError for a pattern that
    matches no module)."""
    selector = LayerSelector(model, 0, ignore)
    opaque = _opaque_projections(model)
    return {name: m for name, m in model.named_modules()
            if is_quantizable(m, embeddings) and not selector.is_ignored(name) and name not in opaque}


def layer_bits(model: nn.Module, bits: int, ignore: Iterable[str] = (), overrides: Mapping[str, int] | None = None,
               embeddings: bool = False) -> dict[str, int]:
    """Bits for each quantized layer of ``model``: the nearest ``overrides`` entry, else ``bits``.

    Raises:
        ConfigError naming ``ignore[i]`` or ``overrides.NAME`` when a pattern matches no module.
    """
    selector = LayerSelector(model, bits, ignore, overrides)
    return {name: int(selector.sparsity_for(name)) for name in quantizable_layers(model, ignore, embeddings)}


def check_layers(model: nn.Module, config: Any) -> dict[str, int]:
    """Check a quantize config against ``model`` before anything runs, and return bits per quantized layer.

    Every ``ignore`` / ``overrides`` pattern must match a module, and a group size must divide the row length of
    every quantized layer.
    """
    bits = layer_bits(model, config.bits, config.ignore, getattr(config, "overrides", None),
                      embeddings=covers_embeddings(config))
    size = getattr(getattr(config, "granularity", None), "size", None)  # PerGroup only
    if size is not None:  # every layer it does not fit, at once: a user fixes them in one edit
        rows = {name: _row_length(model.get_submodule(name), size) for name in bits}
        misfits = [name for name, row in rows.items() if row % size]
        if misfits:
            shown = ", ".join(f"{name} has rows of {rows[name]}" for name in misfits[:4])
            more = f" and {len(misfits) - 4} more" if len(misfits) > 4 else ""
            raise ConfigError("group_size", f"must divide the row length of every quantized layer, got {size}: "
                                            f"{shown}{more} (or ignore {'them' if len(misfits) > 1 else 'it'})")
    return bits


def _row_length(layer: nn.Module, size: int) -> int:
    """The length of the layer's weight rows; for a recurrent layer, that of the first matrix ``size`` does not
    divide (else of its first)."""
    if is_recurrent(layer):
        rows = [p[0].numel() for p in recurrent_weights(layer).values()]
        return next((row for row in rows if row % size), rows[0])
    return layer.weight[0].numel()


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
