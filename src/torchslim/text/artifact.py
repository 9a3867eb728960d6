"""A sentence-embedding artifact: the encoder's tensors (our codecs), its tokenizer and, when it was compiled for
ONNX Runtime, the model ORT runs, all sealed in one artifact folder; and the object it loads back as.

Extra files beside the standard two (see :mod:`torchslim.artifact._format`)::

    tokenizer.json     the model's own tokenizer (a data file for the ``tokenizers`` library; no code)
    model.onnx.zst     (quantize stage) the graph ONNX Runtime runs, zstd-coded, its large initializers taken out

Every weight is stored once. The graph's large initializers (int8 weights, scales, fp32 tables) are tensors of the
artifact (``onnx/<initializer name>``, through the tensor codecs) and are put back byte for byte at load, so ORT
runs exactly the model that was measured; the encoder's own weights that the graph holds (``text.weight_map``) are
not stored again: a torch reload computes with them dequantized from the int8 graph.
Nothing from the source model directory is needed to use the artifact: it encodes on a machine without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import pydantic
import torch

from torchslim._validation import StrictModel, parse
from torchslim.artifact._codec import LARGE, zstd_compress, zstd_decompress
from torchslim.artifact._format import _decode_state, _open, save_artifact
from torchslim.artifact._trust import ArtifactError, read_file
from torchslim.text.encoder import SentenceEncoder
from torchslim.text.tokenizer import Tokenizer

ARCHITECTURE = "sentence-encoder"
TOKENIZER = "tokenizer.json"
ONNX = "model.onnx.zst"
ONNX_PREFIX = "onnx/"  # tensor-table names of the graph's initializers
MAX_ENCODER_PARAMS = 2**30


class EncoderShape(StrictModel):
    """The recorded constructor arguments, bounded so a hostile manifest cannot ask for terabytes."""

    vocab_size: int = pydantic.Field(ge=1, le=10_000_000)
    hidden_size: int = pydantic.Field(ge=1, le=16_384)
    heads: list[int] = pydantic.Field(max_length=256)
    head_dim: int = pydantic.Field(ge=1, le=4096)
    ffn: list[int] = pydantic.Field(max_length=256)
    max_positions: int = pydantic.Field(ge=1, le=1_000_000)
    type_vocab_size: int = pydantic.Field(ge=1, le=1024)
    layer_norm_eps: float = pydantic.Field(gt=0, le=1)
    normalize: bool

    @pydantic.model_validator(mode="after")
    def _bounded(self) -> "EncoderShape":
        if len(self.heads) != len(self.ffn) or any(not 1 <= h <= 4096 for h in self.heads) or any(
                not 1 <= f <= 1_000_000 for f in self.ffn):
            raise ValueError("heads and ffn must list the same number of layers, each at least 1")
        h = self.hidden_size
        params = (self.vocab_size + self.max_positions + self.type_vocab_size) * h + sum(
            4 * h * n * self.head_dim + 2 * h * f for n, f in zip(self.heads, self.ffn))
        if params > MAX_ENCODER_PARAMS:
            raise ValueError(f"describes {params:,} parameters; at most {MAX_ENCODER_PARAMS:,} are allowed")
        return self


def _text_files(encoder: SentenceEncoder, tokenizer_json: str, max_seq_length: int, onnx: Optional[bytes],
                onnx_kind: Optional[str], weight_map: Optional[dict[str, dict]]
                ) -> tuple[dict[str, bytes], dict[str, Any], dict[str, torch.Tensor]]:
    """(payload files, the manifest's ``text`` entry, the tensors to store)."""
    files = {TOKENIZER: tokenizer_json.encode()}
    text: dict[str, Any] = {"tokenizer": TOKENIZER, "max_seq_length": int(max_seq_length)}
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    if onnx is not None:
        from torchslim.text._initializers import split_initializers

        graph, arrays = split_initializers(onnx)
        mapped = {k: v for k, v in (weight_map or {}).items() if k in state}
        for key in mapped:  # the graph holds these weights (int8 or fp32): stored there, once
            del state[key]
        state.update({ONNX_PREFIX + name: torch.from_numpy(array) for name, array in arrays.items()})
        files[ONNX] = zstd_compress(graph, level=3 if len(graph) >= LARGE else 19)
        text.update({"onnx": ONNX, "onnx_kind": onnx_kind or "onnx", "weight_map": mapped})
    return files, text, state


def save_text_artifact(encoder: SentenceEncoder, path: str | Path, *, tokenizer_json: str, max_seq_length: int,
                       onnx: Optional[bytes] = None, onnx_kind: Optional[str] = None,
                       weight_map: Optional[dict[str, dict]] = None, extra: Optional[dict[str, Any]] = None,
                       compress: bool = True) -> Path:
    """Write ``encoder`` (its current, possibly pruned shapes), its tokenizer and the ORT graph as one artifact.

    Args:
        onnx: the ONNX model ORT runs (fused / int8); its initializers are stored as tensors and put back byte
            for byte at load. None: an fp32 export is made when ONNX Runtime is asked for.
        onnx_kind: what ``onnx`` is, for people and reports (e.g. ``int8 dynamic per-channel, fused``).
        weight_map: which of ``onnx``'s initializers hold which encoder weights
            (:func:`torchslim.text._initializers.onnx_weight_map` of the fp32 graph ``onnx`` was made from): those
            weights are not stored twice.
        compress: False stores the tensors as they are (the uncompressed fp32 baseline file).
    """
    files, text, state = _text_files(encoder, tokenizer_json, max_seq_length, onnx, onnx_kind, weight_map)
    return save_artifact(encoder, path, architecture={"name": ARCHITECTURE, "kwargs": encoder.config},
                         extra={"task": "sentence-embedding", "text": text, **(extra or {})}, compress=compress,
                         files=files, state=state)


def text_artifact_bytes(encoder: SentenceEncoder, *, tokenizer_json: str, max_seq_length: int,
                        compress: bool = True) -> int:
    """The bytes :func:`save_text_artifact` would write for a plain (no ONNX graph) artifact of ``encoder``."""
    from torchslim.artifact import artifact_bytes

    files, text, state = _text_files(encoder, tokenizer_json, max_seq_length, None, None, None)
    return artifact_bytes(encoder, architecture={"name": ARCHITECTURE, "kwargs": encoder.config},
                          extra={"task": "sentence-embedding", "text": text}, compress=compress, files=files,
                          state=state)


def is_text_manifest(manifest: dict[str, Any]) -> bool:
    return manifest.get("task") == "sentence-embedding" or (
        isinstance(manifest.get("architecture"), dict) and manifest["architecture"].get("name") == ARCHITECTURE)


class SentenceEmbedder:
    """Sentences in, embeddings out: the artifact's tokenizer, its encoder, its pooling and normalisation.

    ``runtime="torch"`` runs the encoder module; ``"onnxruntime"`` the stored ORT graph (the int8 model when
    the artifact holds one) or an fp32 export of the encoder.
    """

    def __init__(self, encoder: SentenceEncoder, tokenizer: Tokenizer, *, runtime: str = "torch",
                 onnx: Optional[bytes] = None, intra_op_threads: Optional[int] = None,
                 manifest: Optional[dict[str, Any]] = None):
        self.encoder, self.tokenizer, self.runtime = encoder.eval(), tokenizer, runtime
        self.manifest = manifest or {}
        self.session, self.onnx = None, onnx
        if runtime == "onnxruntime":
            from torchslim.text.onnx import OrtEncoder, export_onnx

            self.onnx = onnx if onnx is not None else export_onnx(encoder)
            self.session = OrtEncoder(self.onnx, intra_op_threads)
        self.int8 = onnx is not None and "int8" in str(self.manifest.get("text", {}).get("onnx_kind", ""))

    @property
    def dimension(self) -> int:
        return self.encoder.config["hidden_size"]

    def __call__(self, sentences: Sequence[str]) -> torch.Tensor:
        """One batch: (N, hidden) float32."""
        ids, mask = self.tokenizer(sentences)
        if self.session is not None:
            return self.session(ids, mask)
        with torch.inference_mode():
            return self.encoder(ids, mask)

    def encode(self, sentences: Sequence[str], batch_size: int = 32, sort_by_length: bool = True) -> torch.Tensor:
        """Embeddings of ``sentences`` (a list of strings), (N, hidden) float32, computed ``batch_size`` at a time.

        ``sort_by_length``: batch sentences of similar length together (longest first, as sentence-transformers
        does) and return them in the order given: a batch is padded to its longest sentence, so less padding is
        computed. (Dynamic int8 quantizes each batch's activations with one range, so which sentences share a
        batch moves an int8 embedding slightly; fp32 ones do not change.)

        Example:
            >>> model = torchslim.load("runs/minilm/artifact", runtime="onnxruntime")
            >>> model.encode(["A sentence.", "Another one."]).shape
            torch.Size([2, 384])
        """
        if isinstance(sentences, str):
            raise TypeError("encode takes a list of sentences, not one string")
        try:
            sentences = list(sentences)
        except TypeError:
            raise TypeError(f"encode takes a list of sentences, not {type(sentences).__name__}") from None
        odd = next((i for i, s in enumerate(sentences) if not isinstance(s, str)), None)
        if odd is not None:
            raise TypeError(f"encode takes a list of sentences (strings); item {odd} is "
                            f"{type(sentences[odd]).__name__}")
        order = list(range(len(sentences)))
        if sort_by_length:
            order.sort(key=lambda i: -len(sentences[i]))
        out = [self([sentences[i] for i in order[b:b + batch_size]]) for b in range(0, len(order), batch_size)]
        if not out:
            return torch.zeros(0, self.dimension)
        embeddings = torch.cat(out)
        return embeddings[torch.argsort(torch.tensor(order))]


def load_text_artifact(path: str | Path, *, runtime: str = "torch", verify_key: str | Path | None = None,
                       intra_op_threads: Optional[int] = None,
                       opened: Optional[tuple[dict[str, Any], bytes]] = None) -> SentenceEmbedder:
    """A sentence-embedding artifact back as a :class:`SentenceEmbedder` (no code imported, nothing outside the
    folder read: the tokenizer and graph are the artifact's own sealed payloads)."""
    folder = Path(path)
    if verify_key is not None:
        from torchslim.artifact._signing import verify_artifact

        verify_artifact(folder, verify_key)
    manifest, data = opened if opened is not None else _open(folder)[:2]
    state = _decode_state(folder, manifest, data)
    text = manifest.get("text")
    if not isinstance(text, dict) or text.get("tokenizer") not in manifest["payloads"]:
        raise ArtifactError(folder, "a sentence-embedding artifact must record its tokenizer as a payload")
    try:
        max_len = int(text.get("max_seq_length", 512))
        tokenizer = Tokenizer(read_file(folder, text["tokenizer"]).decode("utf-8"), max_len)
    except Exception as exc:  # noqa: BLE001  (ConfigError from the tokenizer, UnicodeDecodeError, ValueError)
        raise ArtifactError(folder, f"its tokenizer cannot be read: {str(exc)[:160]}") from None
    onnx = None
    if text.get("onnx") is not None:
        if text["onnx"] not in manifest["payloads"]:
            raise ArtifactError(folder, f"the ONNX model {str(text['onnx'])[:80]!r} is not a recorded payload")
        try:
            onnx, rest = zstd_decompress(read_file(folder, text["onnx"]))
            if rest:
                raise ValueError(f"{len(rest)} bytes after the zstd frame")
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001  (zstd's own errors)
            raise ArtifactError(folder, f"{text['onnx']} is not a zstd-coded ONNX model ({exc})") from None
    onnx, state = _join_graph(folder, onnx, state, text.get("weight_map") or {})
    encoder = rebuild_encoder(folder, manifest, state)
    return SentenceEmbedder(encoder, tokenizer, runtime=runtime, onnx=onnx, intra_op_threads=intra_op_threads,
                            manifest=manifest)


def _join_graph(folder: Path, graph: Optional[bytes], state: dict[str, torch.Tensor], weight_map: dict[str, dict]
                ) -> tuple[Optional[bytes], dict[str, torch.Tensor]]:
    """The stored graph with its initializers put back, and the encoder's state completed with the weights the
    graph holds (dequantized from int8 where it quantized them)."""
    arrays = {k[len(ONNX_PREFIX):]: v.numpy() for k, v in state.items() if k.startswith(ONNX_PREFIX)}
    rest = {k: v for k, v in state.items() if not k.startswith(ONNX_PREFIX)}
    if graph is None:
        if arrays or weight_map:
            raise ArtifactError(folder, "holds ONNX initializers but no ONNX graph")
        return None, rest
    from torchslim.text._initializers import dequantized_state_dict, join_initializers

    try:
        onnx = join_initializers(graph, arrays)
        if not isinstance(weight_map, dict) or not all(isinstance(v, dict) for v in weight_map.values()):
            raise ValueError("the weight map is not a mapping of names to locations")
        rest.update(dequantized_state_dict(onnx, weight_map))
    except Exception as exc:  # noqa: BLE001  (onnx's decode errors, a damaged map: whatever the bytes trip over)
        raise ArtifactError(folder, f"its ONNX graph and tensors do not fit together: "
                                    f"{' '.join(str(exc).split())[:200]}") from None
    return onnx, rest


def rebuild_encoder(folder: Path, manifest: dict[str, Any], state: dict[str, torch.Tensor]) -> SentenceEncoder:
    from torchslim._errors import ConfigError

    arch = manifest.get("architecture")
    if not isinstance(arch, dict) or arch.get("name") != ARCHITECTURE:
        raise ArtifactError(folder, "not a sentence-embedding artifact")
    try:
        shape = parse(EncoderShape, arch.get("kwargs"), prefix="architecture.kwargs")
    except ConfigError as exc:
        raise ArtifactError(folder, f"the recorded architecture is invalid: {exc.field}: {exc.message}") from None
    encoder = SentenceEncoder(**shape.model_dump())
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(folder, f"the stored tensors do not fit the recorded encoder: "
                                    f"{' '.join(str(exc).split())[:200]}") from None
    return encoder.eval()
