"""Sentence embeddings: a BERT sentence encoder of our own (rebuildable from numbers), its tokenizer, reading
sentence-transformers model directories, and the three techniques on it: structured pruning and layer dropping
(``shrink``), distillation from the fp32 model (``distill``), int8 in ONNX Runtime (``onnx``).

Heavy dependencies (onnx, onnxruntime) load only when their module is used.
"""

from torchslim.text.distill import DistillConfig, distill_encoder
from torchslim.text.encoder import SentenceEncoder
from torchslim.text.shrink import PruneConfig, drop_layers_, prune_encoder_
from torchslim.text.source import TextModel, builtin_model_dir, load_text_model
from torchslim.text.tokenizer import Tokenizer

__all__ = ["DistillConfig", "PruneConfig", "SentenceEncoder", "TextModel", "Tokenizer", "builtin_model_dir",
           "distill_encoder", "drop_layers_", "load_text_model", "prune_encoder_"]
