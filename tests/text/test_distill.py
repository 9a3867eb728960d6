"""Distilling a smaller sentence encoder: the loss is the stated formula, training closes most of the gap to the
teacher on sentences it never saw, the best epoch is the one returned, and a seed fixes the result."""

import copy

import pytest
import torch

from torchslim._errors import ConfigError
from torchslim.text.distill import (DistillConfig, distill_encoder, distill_loss, embed, mean_cosine,
                                    split_sentences, tokenize_all)
from torchslim.text.encoder import SentenceEncoder
from torchslim.text.shrink import drop_layers_

from tests.text.toy_words import ToyTokenizer, toy_sentences


def teacher_and_student(keep=(0, 2)):
    torch.manual_seed(0)
    teacher = SentenceEncoder(vocab_size=100, hidden_size=32, heads=[4] * 4, head_dim=8, ffn=[64] * 4,
                              max_positions=32).eval()
    return teacher, drop_layers_(copy.deepcopy(teacher), keep=list(keep))


def held_out_cosine(student, teacher, sentences):
    rows = tokenize_all(sentences, ToyTokenizer(), 10 ** 9)
    return mean_cosine(embed(student, rows)[0], embed(teacher, rows)[0])


def test_loss_is_the_reference_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    sh, th = [torch.randn(5, 8, generator=g)], [torch.randn(5, 8, generator=g)]
    cfg = DistillConfig(cosine=0.7, mse=2.0, hidden=3.0)
    cos = torch.tensor([float(a @ b / (a.norm() * b.norm())) for a, b in zip(s, t)])
    reference = 0.7 * (1 - cos).mean() + 2.0 * ((s - t) ** 2).sum() / 40 + 3.0 * ((sh[0] - th[0]) ** 2).sum() / 40
    assert abs(distill_loss(s, t, cfg, sh, th).item() - reference.item()) < 1e-5
    # token states: squared error over real tokens only, divided by (real tokens x hidden)
    st, tt = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    tok_ref = (((st - tt) ** 2)[0, :2].sum() + ((st - tt) ** 2)[1, :1].sum()) / (3 * 4)
    got = distill_loss(s[:2], s[:2], DistillConfig(cosine=0.0, hidden=1.0, hidden_tokens=True), [st], [tt], mask)
    assert abs(got.item() - tok_ref.item()) < 1e-5


def test_distillation_closes_most_of_the_gap_on_unseen_sentences():
    teacher, student = teacher_and_student()
    train, test = toy_sentences(240, seed=1), toy_sentences(120, seed=2)
    before = held_out_cosine(student, teacher, test)
    result = distill_encoder(student, teacher, train, ToyTokenizer(),
                             DistillConfig(epochs=4, batch_size=16, lr=2e-3, hidden=1.0, patience=0, progress=False))
    after = held_out_cosine(student, teacher, test)
    assert before < 0.9
    assert (1 - after) < 0.35 * (1 - before), (before, after)
    assert len(result.history) == 4 and result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert not any(p.requires_grad is False for p in student.parameters())  # the frozen table is released


def test_the_best_validation_epoch_is_returned():
    teacher, student = teacher_and_student()
    sents = toy_sentences(200, seed=3)
    cfg = DistillConfig(epochs=3, batch_size=16, lr=5e-3, val_fraction=0.2, patience=0, progress=False, seed=4)
    result = distill_encoder(student, teacher, sents, ToyTokenizer(), cfg)
    val = split_sentences(sents, [0.8, 0.2], seed=4)[1]
    best = max(h["val_cosine"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_cosine"] == best
    assert abs(held_out_cosine(student, teacher, val) - best) < 1e-5


def test_extra_sentences_are_learned_from_but_never_validated_on():
    sents, extra, test = toy_sentences(24, seed=5), toy_sentences(240, seed=6), toy_sentences(120, seed=7)
    cfg = DistillConfig(epochs=2, batch_size=16, lr=1e-3, hidden=1.0, val_fraction=0.25, patience=0,
                        progress=False, seed=2)
    val = split_sentences(sents, [0.75, 0.25], seed=2)[1]  # the same six sentences with or without extra
    cosines = []
    # with extra: the validation sentences are among the extra ones too, and must not be trained on
    for more in ([], extra + val):
        teacher, student = teacher_and_student()
        result = distill_encoder(student, teacher, sents, ToyTokenizer(), cfg, extra_sentences=more)
        cosines.append(held_out_cosine(student, teacher, test))
        assert result.train_sentences == 18 + (len(extra) if more else 0)
        best = result.history[result.best_epoch - 1]["val_cosine"]
        assert abs(held_out_cosine(student, teacher, val) - best) < 1e-5
    alone, with_extra = cosines
    assert (1 - with_extra) < 0.5 * (1 - alone), cosines  # ten times the text to learn from (0.24 measured)


def test_same_seed_same_student():
    runs = []
    for seed in (0, 0, 1):
        teacher, student = teacher_and_student()
        distill_encoder(student, teacher, toy_sentences(96), ToyTokenizer(),
                        DistillConfig(epochs=2, batch_size=8, lr=1e-3, hidden=1.0, progress=False, seed=seed))
        runs.append(student.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])  # the seed does choose something


def test_word_embeddings_stay_frozen_by_default():
    teacher, student = teacher_and_student()
    table = student.embeddings.word_embeddings.weight.detach().clone()
    pos = student.embeddings.position_embeddings.weight.detach().clone()
    distill_encoder(student, teacher, toy_sentences(64), ToyTokenizer(),
                    DistillConfig(epochs=1, batch_size=8, progress=False))
    assert torch.equal(student.embeddings.word_embeddings.weight, table)
    assert not torch.equal(student.embeddings.position_embeddings.weight, pos)


@pytest.mark.parametrize("kwargs, field", [({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"),
                                           ({"schedule": "step"}, "schedule"), ({"cosine": 0.0}, "cosine"),
                                           ({"warmup": 1.0}, "warmup")])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DistillConfig(**kwargs)


def test_layer_map_must_fit_both_models():
    teacher, student = teacher_and_student()
    with pytest.raises(ConfigError, match="layer_map"):
        distill_encoder(student, teacher, toy_sentences(8), ToyTokenizer(),
                        DistillConfig(hidden=1.0, layer_map=(2, 5), progress=False))
