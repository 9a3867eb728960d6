"""The manifest's fields, checked once when an artifact is opened.

An artifact comes from strangers, and anyone can reseal an edited manifest (``_format``), so a sealed manifest
is only known to be undamaged, not well formed. ``_format._open``, which every reader goes through (``load``,
``eval``, ``inspect``, ``export``, a distillation teacher), checks it against these models: a consumer gets a
manifest whose fields have the types the writers give them, or a one-line :class:`ArtifactError` naming the field.

The models only check; the manifest is handed on as the plain JSON it was read as (nothing coerced, nothing
filled in). Values are strict (``"5"`` is no integer, ``true`` no number). Records that only torchslim writes
refuse unknown keys; the top level and the caller's records (``save_artifact(extra=...)``: metrics, domain,
recipe, data) accept further keys, typed where torchslim reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pydantic

from torchslim._errors import ConfigError
from torchslim._validation import parse
from torchslim.artifact._trust import ArtifactError

MAX_INPUT_VALUES = 2**26  # values in one example of ``input_shape``: ``export`` allocates a batch of two of them
_INT64 = 2**63 - 1  # tensor sizes and byte counts go through numpy's int64

Count = Annotated[int, pydantic.Field(ge=0, le=_INT64)]
Dim = Annotated[int, pydantic.Field(ge=1, le=_INT64)]
Bits = Annotated[int, pydantic.Field(ge=1, le=8)]  # quantized layers store 2..8-bit codes


# A field typed ``T = None`` may be left out but is never null: pydantic does not validate a default, so an
# explicit null is refused like any other value that is no ``T`` (``Optional[T]`` where null is written).


class _Closed(pydantic.BaseModel):
    """A record only torchslim writes: unknown keys are refused, nothing is coerced."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


class _Open(pydantic.BaseModel):
    """A record a caller may extend: further keys pass, the known ones are typed."""

    model_config = pydantic.ConfigDict(extra="allow", strict=True, frozen=True)


class Architecture(_Closed):
    """How the model is rebuilt: a built-in ``name``, a user ``factory`` or a ``module`` given in memory."""

    name: str = None
    factory: str = None
    module: str = None
    kwargs: dict[str, Any] = pydantic.Field(default_factory=dict)

    @pydantic.model_validator(mode="after")
    def _one_way_to_build(self) -> "Architecture":
        if sum(v is not None for v in (self.name, self.factory, self.module)) != 1:
            raise ValueError("must give exactly one of 'name', 'factory' or 'module'")
        return self


class TensorRecord(_Closed):
    """One stored tensor (see ``_codec``)."""

    shape: list[Count]
    dtype: str
    encoding: str
    bytes: Count
    zstd: bool = None
    index_bits: Annotated[int, pydantic.Field(ge=1, le=32)] = None
    entries: Count = None
    numel: Count = None
    fill: Annotated[int, pydantic.Field(ge=0, le=255)] = None


class InputQuant(_Closed):
    bits: Bits
    mode: str


class Granularity(_Closed):
    """``quantize.granularity.granularity_to_json``: one scale per tensor, per channel along ``axis``, or per
    group of ``size`` values."""

    type: Literal["tensor", "channel", "group"]
    axis: Count = None
    size: Annotated[int, pydantic.Field(ge=1, le=_INT64)] = None


class LayerRecord(_Closed):
    """A quantized layer (``quantize._layout.describe_quantized_layers``); the loader names a missing key."""

    kind: str = None
    shape: Annotated[list[Count], pydantic.Field(min_length=2)] = None  # a Linear, Conv or Embedding weight
    encoding: str = None
    bits: Bits = None
    granularity: Granularity = None
    symmetric: bool = None
    reduce_range: bool = None  # a fake-quantized weight on the [-64, 64] grid (quantize.primitives)
    input_quant: Optional[InputQuant] = None  # null: weights only
    tied_to: str = None  # decodes that layer's weight source (a tied weight, coded once)
    # a recurrent layer's matrices, each coded alike, instead of one ``shape``
    weights: dict[str, Annotated[list[Count], pydantic.Field(min_length=2)]] = None

    @pydantic.model_validator(mode="after")
    def _axis_of_the_weight(self) -> "LayerRecord":
        if self.shape is not None and self.weights is not None:
            raise ValueError("give a weight's 'shape' or a recurrent layer's 'weights', not both")
        axis = self.granularity.axis if self.granularity is not None else None
        for shape in [self.shape] if self.weights is None else self.weights.values():
            if axis is not None and shape is not None and axis >= len(shape):
                raise ValueError(f"granularity.axis {axis} is no axis of a weight of shape {shape}")
        return self


class SharedInitializer(_Closed):
    """Where an int8 graph's stripped initializer comes from: a layer's codes or a state-dict tensor (each maybe
    transposed), a GRU/LSTM layer's gates in ONNX's order (``rnn``, ``rnn_layer``, ``part``), or an int8 LSTM's
    codes in DynamicQuantizeLSTM's layout (``rnn_codes``, ``rnn_layer``, ``part`` W or R)."""

    layer: str = None
    tensor: str = None
    transpose: bool = None
    rnn: str = None
    rnn_codes: str = None
    rnn_layer: Count = None
    part: Literal["W", "R", "B"] = None

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> "SharedInitializer":
        if sum(v is not None for v in (self.layer, self.tensor, self.rnn, self.rnn_codes)) != 1:
            raise ValueError("must give exactly one of 'layer', 'tensor', 'rnn' or 'rnn_codes'")
        recurrent = self.rnn is not None or self.rnn_codes is not None
        if not recurrent and self.transpose is None:
            raise ValueError("must say whether it is transposed ('transpose')")
        if recurrent and (self.rnn_layer is None or self.part is None or self.transpose is not None):
            raise ValueError("a recurrent layer's initializer gives 'rnn_layer' and 'part', and no 'transpose'")
        if self.rnn_codes is not None and self.part == "B":
            raise ValueError("an int8 LSTM's codes are its matrices: 'part' W or R")
        return self


class SharedWeights(_Closed):
    initializers: dict[str, SharedInitializer]
    sha256: str


class Quantization(_Closed):
    layers: dict[str, LayerRecord] = pydantic.Field(default_factory=dict)
    int8_onnx: str = None
    int8_onnx_weights: SharedWeights = None

    @pydantic.field_validator("layers")
    @classmethod
    def _ties_name_a_layer_coded_alike(cls, layers: dict[str, LayerRecord]) -> dict[str, LayerRecord]:
        for name, record in layers.items():
            leader = layers.get(record.tied_to) if record.tied_to is not None else None
            if record.tied_to is not None and (leader is None or leader.tied_to is not None or any(
                    getattr(leader, key) != getattr(record, key) for key in ("shape", "encoding", "bits"))):
                raise ValueError(f"{name}.tied_to {record.tied_to!r} must name another layer whose weight is "
                                 f"coded alike and tied to none")
        return layers


class Structure(_Closed):
    """How the model differs from its architecture (``quantize._layout.describe_structure``)."""

    baked_parametrizations: list[str] = pydantic.Field(default_factory=list)
    folded_batchnorm: dict[str, str] = pydantic.Field(default_factory=dict)
    projected_attention: list[str] = pydantic.Field(default_factory=list)
    tensorless_norms: dict[str, Annotated[list[Annotated[int, pydantic.Field(ge=1, le=_INT64)]],
                                          pydantic.Field(min_length=1, max_length=8)]] = (
        pydantic.Field(default_factory=dict))


class Metrics(_Open):
    metric: str = None
    value: float = None  # NaN allowed: a model can measure as NaN (JSON from Python writes it)


class Baseline(_Closed):
    """The uncompressed model ``eval`` compares against (the runner's record)."""

    architecture: Architecture
    value: float
    params: Count
    size_bytes: Annotated[int, pydantic.Field(ge=1, le=_INT64)]


class DomainRecord(_Open):
    """The domain the artifact was made for (``Domain.to_dict()``); kept open so older domains still read."""

    name: str = None
    task: str = None
    metric: str = None
    runtime: str = None
    data: dict[str, Any] = None
    model: dict[str, Any] = None
    constraints: dict[str, Any] = None


class RecipeRecord(_Open):
    seed: Count = None
    stages: list[dict[str, Any]] = None


class TextRecord(_Closed):
    """A sentence-embedding artifact's tokenizer and ONNX graph (``torchslim.text.artifact``)."""

    tokenizer: str
    max_seq_length: Dim = None
    onnx: str = None
    onnx_kind: str = None
    weight_map: dict[str, dict[str, Any]] = None


class Manifest(_Open):
    """Every field a torchslim writer puts in a manifest; further keys (``save_artifact(extra=...)``) pass."""

    format: str
    version: int
    architecture: Architecture
    tensors: dict[str, TensorRecord]
    payloads: dict[str, str]
    entropy: Literal["payload"] = None
    structure: Structure = None
    quantization: Quantization = None
    versions: dict[str, str] = None
    input_shape: list[Dim] = None
    labels: list[str] = None
    preprocessing: str = None
    data: dict[str, Any] = None
    domain: DomainRecord = None
    recipe: RecipeRecord = None
    seed: Count = None
    metrics: Metrics = None
    baseline: Baseline = None
    task: str = None
    text: TextRecord = None
    source_model: str = None
    tied: dict[str, str] = None  # a state-dict key -> the stored tensor it shares (a tied weight)

    @pydantic.field_validator("tied")
    @classmethod
    def _ties_name_stored_tensors(cls, tied: dict[str, str], info: pydantic.ValidationInfo) -> dict[str, str]:
        stored = info.data.get("tensors", {})
        for alias, key in tied.items():
            if key not in stored or alias in stored:
                raise ValueError(f"{alias!r} -> {key!r}: each must map a key not stored to a stored tensor")
        return tied

    @pydantic.field_validator("input_shape")
    @classmethod
    def _input_fits_in_memory(cls, shape: Optional[list[int]]) -> Optional[list[int]]:
        values = 1
        for size in shape or []:
            values *= size
            if values > MAX_INPUT_VALUES:
                raise ValueError(f"describes more than {MAX_INPUT_VALUES:,} values per example")
        return shape


def check_manifest(folder: Path, manifest: Any) -> None:
    """Refuse a manifest whose fields are not what torchslim writes, with one line naming the field.

    Raises:
        ArtifactError: ``<folder>: manifest field input_shape[0]: must be >= 1`` (or ``the manifest has no
            architecture`` for a required field that is missing).
    """
    try:
        parse(Manifest, manifest)
    except ConfigError as exc:
        if exc.message == "required key is missing":
            raise ArtifactError(folder, f"the manifest has no {exc.field} (a required field)") from None
        raise ArtifactError(folder, f"manifest field {exc.field}: {exc.message}") from None
