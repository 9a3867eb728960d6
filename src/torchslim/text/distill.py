"""Distil a smaller :class:`SentenceEncoder` (layers dropped, heads or neurons pruned) from the full one on unlabelled
sentences: the student learns to reproduce the teacher's sentence embedding (cosine and/or MSE) and, optionally,
its intermediate layers (mean-pooled, normalised hidden states, student layer ``i`` against teacher layer
``layer_map[i]``).

Why it is cheap enough for two CPU cores: the teacher is frozen, so its outputs are computed once and cached (its
pass would otherwise cost more than the student's); the word embeddings (half of MiniLM's parameters) are frozen by
default; sentences are truncated to ``max_length`` tokens and batched with sentences of similar length, so little
compute goes to padding.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from torchslim._errors import ConfigError
from torchslim.text.encoder import SentenceEncoder

__all__ = ["DistillConfig", "DistillResult", "distill_encoder", "distill_loss", "embed", "mean_cosine",
           "pad_rows", "split_sentences", "tokenize_all"]


@dataclass(frozen=True)
class DistillConfig:
    """How the student is trained.

    Args:
        epochs: passes over the training sentences (early stopping may end sooner).
        batch_size, lr, weight_decay: AdamW on the trainable parameters.
        warmup: fraction of the steps with a linearly rising learning rate; then ``schedule`` (``"linear"`` or
            ``"cosine"``) decays it to zero.
        max_length: tokens per training sentence (leading tokens + [SEP]); validation uses the tokenizer's own.
        cosine, mse: weights of ``1 - cos(s, t)`` and of ``mean((s - t)^2)`` on the pooled embeddings.
        hidden: weight of the hidden-state loss: ``mean_i mean((norm(pool(s_i)) - norm(pool(t_map[i])))^2)``
            (pooled and normalised), or with ``hidden_tokens`` the MSE of the token states themselves over real
            tokens (a target per token, not per sentence: more signal per teacher pass, but the cache holds
            every token's state in float16: sentences x tokens x hidden x 2 bytes per matched layer).
        layer_map: teacher layer (1-based: 0 is the embedding output) matched to student layers 1..L; default
            spreads them evenly and ends at the teacher's last layer (3 of 6: ``[2, 4, 6]``).
        freeze_word_embeddings: keep the token embedding table fixed (11.7M of MiniLM's 22.7M parameters).
        val_fraction: share of the sentences held out to pick the best epoch by mean cosine to the teacher.
        patience: stop after this many epochs without a better validation cosine (0: never stop early).
        seed: batch order; the same seed gives the same student.
        progress: a bar per epoch in a terminal, one line per epoch otherwise.
    """

    epochs: int = 4
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    schedule: str = "linear"
    max_length: int = 64
    cosine: float = 1.0
    mse: float = 0.0
    hidden: float = 0.0
    hidden_tokens: bool = False
    layer_map: Optional[tuple[int, ...]] = None
    freeze_word_embeddings: bool = True
    val_fraction: float = 0.1
    patience: int = 2
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        def bad(name, what):
            raise ConfigError(name, f"{what}, got {getattr(self, name)!r}")

        for name in ("epochs", "batch_size", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.max_length < 2:
            bad("max_length", "at least 2 ([CLS] and [SEP])")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            bad("lr", "a learning rate in (0, 1)")
        for name in ("weight_decay", "cosine", "mse", "hidden"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                bad(name, "a number >= 0")
        if self.cosine + self.mse + self.hidden <= 0:
            raise ConfigError("cosine", "at least one of cosine, mse, hidden must be > 0")
        if not 0 <= self.warmup < 1:
            bad("warmup", "a fraction in [0, 1)")
        if self.schedule not in ("linear", "cosine"):
            bad("schedule", "'linear' or 'cosine'")
        if not 0 <= self.val_fraction < 1:
            bad("val_fraction", "a fraction in [0, 1)")
        if not isinstance(self.patience, int) or self.patience < 0:
            bad("patience", "an integer >= 0")


@dataclass
class DistillResult:
    student: SentenceEncoder
    history: list[dict] = field(default_factory=list)  # per epoch: train_loss, val_cosine, seconds
    best_epoch: int = -1
    train_sentences: int = 0  # trained on: the training part and the extra sentences not held out
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # this process's CPU time (what a busy machine does not inflate)


# ------------------------------------------------------------------------------------------------------ data

def tokenize_all(sentences: Sequence[str], tokenizer: Callable, max_length: int) -> list[torch.Tensor]:
    """Each sentence's token ids (1-D), truncated to ``max_length`` keeping the leading tokens and the last one
    ([SEP]). ``tokenizer(list) -> (ids, mask)`` padded, as :class:`~torchslim.text.Tokenizer`."""
    rows = []
    for start in range(0, len(sentences), 1024):
        ids, mask = tokenizer(list(sentences[start:start + 1024]))
        for r, m in zip(ids, mask):
            r = r[: int(m.sum())]
            rows.append(r if len(r) <= max_length else torch.cat([r[: max_length - 1], r[-1:]]))
    return rows


def pad_rows(rows: Sequence[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device)


def _length_batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Batches of sentences of similar length, in a random order: shuffle, sort within pools of 50 batches, cut,
    shuffle the batches (the order changes each epoch; padding stays small)."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def split_sentences(sentences: Sequence[str], fractions: Sequence[float], seed: int = 0) -> list[list[str]]:
    """A seeded random split (e.g. ``[0.8, 0.1, 0.1]`` -> train, val, test); the last part takes the rest."""
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed)).tolist()
    parts, start = [], 0
    for k, f in enumerate(fractions):
        end = len(order) if k == len(fractions) - 1 else start + int(round(f * len(order)))
        parts.append([sentences[i] for i in order[start:end]])
        start = end
    return parts


# ---------------------------------------------------------------------------------------------------- losses

def _pooled_normed(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (N, T, H) -> (N, H), unit length
    w = mask.unsqueeze(-1).to(tokens.dtype)
    return F.normalize((tokens * w).sum(1) / w.sum(1).clamp(min=1e-9), dim=-1)


def distill_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, cfg: DistillConfig,
                 student_hidden: Sequence[torch.Tensor] = (), teacher_hidden: Sequence[torch.Tensor] = (),
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``cosine * mean(1 - cos) + mse * mean((s - t)^2) + hidden * mean_i mean((s_i - t_i)^2)``.

    The embeddings are (N, H); the hidden terms are pooled and normalised (N, H) pairs, or token states
    (N, T, H) with ``mask`` (N, T): then each term is the mean over real tokens and hidden units.
    """
    loss = student_emb.new_zeros(())
    if cfg.cosine:
        loss = loss + cfg.cosine * (1 - F.cosine_similarity(student_emb, teacher_emb, dim=-1)).mean()
    if cfg.mse:
        loss = loss + cfg.mse * F.mse_loss(student_emb, teacher_emb)
    if cfg.hidden and len(student_hidden):
        if mask is None:
            terms = [F.mse_loss(s, t) for s, t in zip(student_hidden, teacher_hidden)]
        else:
            w = mask.unsqueeze(-1).to(student_emb.dtype)  # (N, T, 1)
            denom = w.sum() * student_hidden[0].shape[-1]
            terms = [((s - t).pow(2) * w).sum() / denom for s, t in zip(student_hidden, teacher_hidden)]
        loss = loss + cfg.hidden * torch.stack(terms).mean()
    return loss


def default_layer_map(student_depth: int, teacher_depth: int) -> list[int]:
    """Teacher layer for each student layer, spread evenly and ending at the last: 3 of 6 -> [2, 4, 6]."""
    return [round((i + 1) * teacher_depth / student_depth) for i in range(student_depth)]


# ---------------------------------------------------------------------------------------------------- helpers

@torch.no_grad()
def embed(encoder: SentenceEncoder, rows: Sequence[torch.Tensor], batch_size: int = 128,
          layers: Sequence[int] = (), tokens: bool = False, desc: str | None = None) -> tuple[torch.Tensor, list]:
    """Embeddings (N, H) of tokenized sentences, and the pooled normalised hidden states of ``layers`` (1-based)
    -- or with ``tokens`` each sentence's (T_i, H) token states in float16 -- on the CPU, in the order of ``rows``
    (batched by length internally). ``desc``: a progress bar with this label (minutes for a corpus on a CPU)."""
    from tqdm.auto import tqdm

    device = next(encoder.parameters()).device
    was = encoder.training
    encoder.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.empty(len(rows), encoder.config["hidden_size"])
    hid = [[None] * len(rows) if tokens else torch.empty_like(out) for _ in layers]
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False, disable=desc is None):
        idx = order[start:start + batch_size]
        ids, mask = pad_rows([rows[i] for i in idx], device)
        states = encoder.hidden_states(ids, mask)
        out[idx] = encoder.pool(states[-1], mask).float().cpu()
        for h, layer in zip(hid, layers):
            if tokens:
                lengths = mask.sum(1).tolist()
                for row, i in enumerate(idx):
                    h[i] = states[layer][row, :lengths[row]].to(torch.float16).cpu()
            else:
                h[idx] = _pooled_normed(states[layer], mask).float().cpu()
    encoder.train(was)
    return out, hid


def _pad_states(states: Sequence[torch.Tensor], width: int) -> torch.Tensor:  # [(T_i, H)] -> (N, width, H)
    out = torch.zeros(len(states), width, states[0].shape[-1])
    for i, s in enumerate(states):
        out[i, :len(s)] = s.float()
    return out


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1).mean())


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else max(0.0, 1 - progress)


# ------------------------------------------------------------------------------------------------------- verb

def distill_encoder(student: SentenceEncoder, teacher: SentenceEncoder, sentences: Sequence[str], tokenizer,
                    config: DistillConfig = DistillConfig(), *, extra_sentences: Sequence[str] = (),
                    device: Optional[torch.device] = None) -> DistillResult:
    """Train ``student`` (in place) to reproduce ``teacher``'s embeddings on unlabelled ``sentences``.

    ``config.val_fraction`` of the sentences (a seeded choice) is held out; the student of the epoch with the best
    mean cosine to the teacher there is returned. ``extra_sentences`` only add to the training part (those among
    the held-out ones are left out): more text to learn from, while the epoch is still chosen on sentences like the
    caller's. Training runs on ``device`` (a GPU when present); both models are handed back on the device they
    came on.

    Example::

        student = drop_layers_(copy.deepcopy(teacher), keep=[0, 2, 4])
        result = distill_encoder(student, teacher, sentences, tokenizer, DistillConfig(epochs=3, hidden=1.0))
        result.history[-1]["val_cosine"]

    Returns:
        a :class:`DistillResult`: the student, and per epoch the training loss, validation cosine and seconds.
    """
    from tqdm.auto import tqdm

    cfg = config
    if not isinstance(cfg, DistillConfig):
        raise ConfigError("config", f"a DistillConfig, got {type(cfg).__name__}")
    if len(sentences) < 2:
        raise ConfigError("sentences", "distillation needs at least two sentences")
    if student.config["hidden_size"] != teacher.config["hidden_size"]:
        raise ConfigError("student", "student and teacher must have the same hidden size")
    s_depth, t_depth = len(student.encoder.layer), len(teacher.encoder.layer)
    layer_map = list(cfg.layer_map) if cfg.layer_map is not None else default_layer_map(s_depth, t_depth)
    if len(layer_map) != s_depth or any(not 0 <= m <= t_depth for m in layer_map):
        raise ConfigError("layer_map", f"{s_depth} teacher layers in [0, {t_depth}] expected, got {layer_map}")
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0, c0 = time.perf_counter(), time.process_time()
    # Both models go back where they came from: the caller measures, prunes and exports on its own device.
    homes = [(m, next(m.parameters()).device) for m in (student, teacher)]
    student.to(device)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    n_val = int(round(cfg.val_fraction * len(sentences))) if cfg.val_fraction > 0 else 0
    train_s, val_s = split_sentences(sentences, [1 - n_val / len(sentences), n_val / len(sentences)], cfg.seed) \
        if n_val else (list(sentences), [])
    held_out = set(val_s)
    extra = [s for s in extra_sentences if s not in held_out]
    train_rows = tokenize_all(list(train_s) + extra, tokenizer, cfg.max_length)
    val_rows = tokenize_all(val_s, tokenizer, 10 ** 9) if val_s else []
    # Student layer i (1-based) is matched to teacher layer layer_map[i-1]; the last student layer's pooled output
    # is the embedding itself, so it needs no separate hidden target when the map ends at the teacher's last.
    hid_layers = [(i + 1, m) for i, m in enumerate(layer_map)] if cfg.hidden else []
    # The teacher is frozen: its targets once, here, rather than every step.
    lines = cfg.progress and not sys.stderr.isatty()  # a log file gets lines, a terminal bars
    if lines:
        print(f"distill: the teacher's targets for {len(train_rows):,} sentences", file=sys.stderr, flush=True)
    t_emb, t_hid = embed(teacher, train_rows, layers=[m for _, m in hid_layers], tokens=cfg.hidden_tokens,
                         desc="teacher targets" if cfg.progress and not lines else None)
    t_val = embed(teacher, val_rows)[0] if val_rows else None

    word = student.embeddings.word_embeddings.weight
    frozen = word.requires_grad
    if cfg.freeze_word_embeddings:
        word.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and LayerNorm
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total)) if cfg.warmup > 0 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, warm, cfg.schedule))

    gen = torch.Generator().manual_seed(cfg.seed)
    lengths = [len(r) for r in train_rows]
    result = DistillResult(student=student, train_sentences=len(train_rows))
    best_val, best_state, bad_epochs = -float("inf"), None, 0
    try:
        for epoch in range(cfg.epochs):
            e0 = time.perf_counter()
            student.train()
            batches = _length_batches(lengths, cfg.batch_size, gen)
            bar = tqdm(batches, desc=f"distill {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                       disable=not cfg.progress or lines)
            total_loss, count = 0.0, 0
            for idx in bar:
                ids, mask = pad_rows([train_rows[i] for i in idx], device)
                states = student.hidden_states(ids, mask)
                s_emb = student.pool(states[-1], mask)
                if cfg.hidden_tokens:
                    s_hid = [states[i] for i, _ in hid_layers]
                    t_tok = [_pad_states([h[i] for i in idx], ids.shape[1]).to(device) for h in t_hid]
                    loss = distill_loss(s_emb, t_emb[idx].to(device), cfg, s_hid, t_tok, mask)
                else:
                    s_hid = [_pooled_normed(states[i], mask) for i, _ in hid_layers]
                    loss = distill_loss(s_emb, t_emb[idx].to(device), cfg, s_hid, [h[idx].to(device) for h in t_hid])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += loss.item() * len(idx)
                count += len(idx)
            train_loss = total_loss / max(count, 1)
            if not math.isfinite(train_loss):
                raise ConfigError("lr", f"distillation diverged (loss {train_loss} in epoch {epoch + 1}); "
                                        f"try a smaller lr")
            val_cos = mean_cosine(embed(student, val_rows)[0], t_val) if val_rows else float("nan")
            result.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_cosine": val_cos,
                                   "seconds": time.perf_counter() - e0})
            if lines:
                print(f"distill epoch {epoch + 1}/{cfg.epochs}: loss {train_loss:.5f}, val cosine {val_cos:.4f}, "
                      f"{time.perf_counter() - e0:.0f} s", file=sys.stderr, flush=True)
            if not val_rows:
                result.best_epoch = epoch + 1
                continue
            if val_cos > best_val:
                best_val, bad_epochs, result.best_epoch = val_cos, 0, epoch + 1
                best_state = copy.deepcopy(student.state_dict())
            else:
                bad_epochs += 1
                if cfg.patience and bad_epochs >= cfg.patience:
                    break
        if best_state is not None:
            student.load_state_dict(best_state)
    finally:
        word.requires_grad_(frozen)
        student.eval()
        for model, home in homes:
            model.to(home)
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - c0
    return result
