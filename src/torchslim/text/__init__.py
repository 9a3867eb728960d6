"""Sentence embeddings: a BERT sentence encoder of our own (rebuildable from numbers), its tokenizer, and reading
sentence-transformers model directories."""

from torchslim.text.encoder import SentenceEncoder
from torchslim.text.source import TextModel, builtin_model_dir, load_text_model
from torchslim.text.tokenizer import Tokenizer

__all__ = ["SentenceEncoder", "TextModel", "Tokenizer", "builtin_model_dir", "load_text_model"]
