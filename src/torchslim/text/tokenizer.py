"""The model's own tokenizer, from its ``tokenizer.json`` (Hugging Face ``tokenizers``: a data file, no code)."""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch

from torchslim._errors import ConfigError


class Tokenizer:
    """Sentences -> ``(input_ids, attention_mask)``, each (N, T) int64, padded to the longest sentence of the batch
    and truncated to ``max_length`` tokens (said once per tokenizer: to ``notify`` when given, else as a
    warning)."""

    def __init__(self, tokenizer_json: str, max_length: int, *, field: str = "tokenizer",
                 notify: Optional[Callable[[str], None]] = None):
        from tokenizers import Tokenizer as _HF

        try:
            self._tok = _HF.from_str(tokenizer_json)
        except Exception as exc:  # noqa: BLE001  (the Rust library raises its own exception kind)
            raise ConfigError(field, f"tokenizer.json is not a readable tokenizer ({str(exc)[:120]})") from None
        self.max_length = int(max_length)
        self._tok.no_padding()
        self._tok.no_truncation()
        self._warned = False
        self.notify = notify
        self.pad_id = 0
        pad = self._tok.token_to_id("[PAD]")
        if pad is not None:
            self.pad_id = pad

    def __call__(self, sentences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encodings = self._tok.encode_batch(list(sentences))
        ids = [e.ids for e in encodings]
        if any(len(i) > self.max_length for i in ids):
            if not self._warned:
                longest = max(len(i) for i in ids)
                message = (f"a sentence of {longest} tokens is longer than the model's maximum length "
                           f"{self.max_length}; longer sentences are truncated")
                if self.notify is not None:
                    self.notify(f"note: {message}")
                else:
                    warnings.warn(message, stacklevel=2)
                self._warned = True
            # keep the leading tokens and the closing [SEP]
            ids = [i if len(i) <= self.max_length else i[:self.max_length - 1] + i[-1:] for i in ids]
        width = max(1, max(len(i) for i in ids))
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        return input_ids, mask
