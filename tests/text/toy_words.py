"""A toy vocabulary of words w0..w95 and a whitespace tokenizer with text.Tokenizer's interface: tiny encoders
(vocab 100) trained and pruned in seconds."""

import torch

WORDS = [f"w{i}" for i in range(96)]


class ToyTokenizer:
    """Whitespace words -> ids: [CLS]=1, words 4.., [SEP]=2, padding 0 (the interface of text.Tokenizer)."""

    def __call__(self, sentences):
        rows = [[1] + [4 + WORDS.index(w) for w in s.split()] + [2] for s in sentences]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return ids, mask


def toy_sentences(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 14, (n,), generator=g).tolist()
    return [" ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (k,), generator=g).tolist()) for k in lengths]
