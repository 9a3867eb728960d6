"""all-MiniLM-L6-v2 made smaller, then distilled from itself on unlabelled sentences: mean cosine to the 6-layer
teacher on held-out sentences the training never saw.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/minilm_distill.py --sentences domains/corpus/sentences.txt

Rows: the 3-layer student (layers 0, 2, 4 kept) without distillation; with plain embedding-MSE distillation
(2,400 sentences x 4 epochs); with the full recipe (cosine on the embedding + token-state distillation of layers
[2, 4, 6], lr 5e-4 with warm-up and linear decay, 64 tokens, word embeddings frozen); and 6-layer students with
pruned heads / FFN neurons, before and after the same recipe. Time is wall clock and this process's CPU seconds
(on a shared machine the wall clock is inflated by other work; the CPU time is not).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from torchslim.text import Tokenizer, builtin_model_dir, load_text_model  # noqa: E402
from torchslim.text.distill import (DistillConfig, distill_encoder, embed, mean_cosine, split_sentences,  # noqa: E402
                                    tokenize_all)
from torchslim.text.shrink import PruneConfig, drop_layers_, prune_encoder_  # noqa: E402


def params(enc) -> float:
    return sum(p.numel() for p in enc.parameters()) / 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", default="domains/corpus/sentences.txt", help="one sentence per line")
    ap.add_argument("--train", type=int, default=16000, help="training sentences for the full recipe")
    ap.add_argument("--test", type=int, default=1000, help="held-out sentences the cosine is measured on")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--prune", default="ffn=0.5", help="pruned points, ';'-separated, e.g. 'ffn=0.5;heads=0.25,ffn=0.5'"
                                                       " ('' for none)")
    ap.add_argument("--skip-plain", action="store_true", help="skip the plain-MSE row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.sentences)
    if not path.is_file():
        print(f"error: --sentences: {path}: no such file", file=sys.stderr)
        return 2
    sentences = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    model = load_text_model(builtin_model_dir("all-minilm-l6-v2"))
    tok = Tokenizer(model.tokenizer_json, model.max_seq_length)
    teacher = model.encoder
    # Seeded split: the test sentences are never trained on, nor used to pick an epoch (that is the val slice
    # distill_encoder takes out of the training sentences).
    pool, test = split_sentences(sentences, [1 - args.test / len(sentences), args.test / len(sentences)], args.seed)
    train = pool[:args.train]
    test_rows = tokenize_all(test, tok, 10 ** 9)
    t_test = embed(teacher, test_rows)[0]
    print(f"{len(sentences)} sentences: {len(train)} for training (5% of them validation), {len(test)} held out; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    def cos(enc) -> float:
        return mean_cosine(embed(enc, test_rows)[0], t_test)

    full = DistillConfig(epochs=args.epochs, batch_size=32, lr=args.lr, warmup=0.1, max_length=64, cosine=1.0,
                         hidden=1.0, hidden_tokens=True, val_fraction=0.05, patience=2, seed=args.seed)
    rows = []

    def row(name, enc, result=None, before=None):
        c = cos(enc)
        rows.append((name, enc.config["heads"], enc.config["ffn"], params(enc), before, c,
                     result.seconds if result else None, result.cpu_seconds if result else None))
        print(f"  {name}: cosine {c:.4f}" + (f" ({result.seconds:.0f} s wall, {result.cpu_seconds:.0f} s CPU)"
                                              if result else ""), flush=True)
        return c

    row("teacher (6 layers)", teacher)
    dropped = drop_layers_(copy.deepcopy(teacher), keep=[0, 2, 4])
    cos_dropped = row("3 layers, no distillation", dropped)
    cos_plain = None
    if not args.skip_plain:
        plain = copy.deepcopy(dropped)
        res = distill_encoder(plain, teacher, pool[:2400], tok,
                              DistillConfig(epochs=4, lr=1e-4, cosine=0.0, mse=1.0, max_length=128,
                                            freeze_word_embeddings=False, val_fraction=0.0, seed=args.seed))
        cos_plain = row("3 layers, plain embedding-MSE KD (2,400 x 4 epochs)", plain, res)
    student = copy.deepcopy(dropped)
    res = distill_encoder(student, teacher, train, tok, full)
    cos_full = row(f"3 layers, full recipe ({len(train)} x <= {args.epochs} epochs)", student, res)
    print("    per epoch: " + ", ".join(f"{h['epoch']}: val {h['val_cosine']:.4f} ({h['seconds']:.0f} s)"
                                        for h in res.history), flush=True)

    calib = pool[-256:]  # calibration sentences for the importance scores (unlabelled)
    for spec in [s for s in args.prune.split(";") if s.strip()]:
        kw = {k.strip(): float(v) for k, v in (p.split("=") for p in spec.split(","))}
        pruned = copy.deepcopy(teacher)
        prune_encoder_(pruned, PruneConfig(**kw, ffn_multiple=16), calib, tok)
        before = cos(pruned)
        res = distill_encoder(pruned, teacher, train, tok, full)
        row(f"6 layers, {spec} pruned + full recipe", pruned, res, before)

    print("\n| student | heads | ffn | params (M) | cosine before KD | cosine | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, heads, ffn, p, before, c, wall, cpu in rows:
        short = lambda v: str(v[0]) + f" x{len(v)}" if len(set(v)) == 1 else str(v)  # noqa: E731
        print(f"| {name} | {short(heads)} | {short(ffn)} | {p:.2f} | {'' if before is None else f'{before:.4f}'} "
              f"| {c:.4f} | {'' if wall is None else f'{wall:.0f}'} | {'' if cpu is None else f'{cpu:.0f}'} |")
    gap = (cos_full - cos_dropped) / (1 - cos_dropped)
    print(f"\ngap recovered by the full recipe, (cos_KD - cos_dropped) / (1 - cos_dropped): {gap:.3f}")
    if cos_plain is not None:
        print(f"gap recovered by plain embedding-MSE KD: {(cos_plain - cos_dropped) / (1 - cos_dropped):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
