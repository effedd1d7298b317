"""Static student kernels (models/static.py, training/static_step.py), without Ray: corpus SIF
weights, Model2Vec distillation of a tiny random-init BERT, training on teacher vectors with the
parallel term, and the export that model2vec and sentence-transformers load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdistill.models.static import distil_static, sif_weights, token_counts, with_sif_weights
from mdistill.training import static_step

from conftest import make_tiny_model


def test_sif_weights_are_a_over_a_plus_corpus_frequency():
    # total 4: p = 0, .25, .75 -> a/(a+p) with a = .25
    assert sif_weights(np.array([0, 1, 3]), a=0.25) == pytest.approx([1.0, 0.5, 0.25])
    assert sif_weights(np.zeros(3), a=0.1) == pytest.approx([1.0, 1.0, 1.0])  # an empty corpus weighs nothing down
    with pytest.raises(ValueError, match="non-negative"):
        sif_weights(np.array([1, -1]))
    with pytest.raises(ValueError, match="SIF a"):
        sif_weights(np.array([1, 1]), a=0)


@pytest.fixture(scope="module")
def static_and_texts(tmp_path_factory, pairs):
    texts = list(pairs.en) + list(pairs.text)
    src = make_tiny_model(tmp_path_factory.mktemp("m") / "src", texts, hidden=32, seed=3)
    return distil_static(src), pairs


def test_counts_are_the_static_tokenizers_pieces(static_and_texts):
    static, pairs = static_and_texts
    texts = list(pairs.text[:50])
    counts = token_counts(static.tokenizer, texts, len(static.embedding))
    # two halves add up to the whole; each piece counted as the model encodes (no special tokens)
    halves = token_counts(static.tokenizer, texts[:25], len(static.embedding)) + token_counts(
        static.tokenizer, texts[25:], len(static.embedding)
    )
    assert (counts == halves).all()
    assert counts.sum() == sum(len(e.ids) for e in static.tokenizer.encode_batch_fast(texts, add_special_tokens=False))
    with pytest.raises(ValueError, match="token counts for a vocabulary"):
        with_sif_weights(static, counts[:-1])


def test_trained_static_student_moves_translations_onto_the_teacher_and_exports_those_vectors(static_and_texts, tmp_path, show):
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    static, pairs = static_and_texts
    rows = pairs.iloc[:200]
    en, text = list(rows.en), list(rows.text)
    counts = token_counts(static.tokenizer, en + text, len(static.embedding))
    student = static_step.trainable(with_sif_weights(static, counts))
    # a learnable target: fixed random unit vectors per English source (the teacher's space)
    g = torch.Generator().manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(len(en), static.dim, generator=g), dim=1).numpy()

    def top1(vecs: np.ndarray) -> float:  # student(xx) -> nearest teacher(en)
        return float((np.argmax(vecs @ teacher.T, axis=1) == np.arange(len(en))).mean())

    texts, targets = en + text, np.concatenate([teacher, teacher])  # the recipe's rows: sources and translations
    with torch.no_grad():
        before_loss = float(static_step.static_loss(student, texts, torch.tensor(targets)))
    before = top1(student.encode(text))
    opt, sched = static_step.make_optimizer(student, lr=0.05, total_steps=30 * 8)
    order = np.random.default_rng(0).permutation(len(texts))
    for _ in range(30):
        for s in range(0, len(texts), 50):
            b = order[s : s + 50]
            static_step.train_step(student, opt, sched, [texts[i] for i in b], targets[b])
    with torch.no_grad():
        after_loss = float(static_step.static_loss(student, texts, torch.tensor(targets)))
    after = top1(student.encode(text))
    show(f"loss {before_loss:.5f} -> {after_loss:.5f}, top-1 {before:.2f} -> {after:.2f}")
    assert after_loss < 0.5 * before_loss, (before_loss, after_loss)
    assert after > before + 0.3, (before, after)

    ours = student.encode(text[:20])
    static_step.to_static(student).save_pretrained(str(tmp_path / "static"))
    loaded = StaticModel.from_pretrained(str(tmp_path / "static"))
    st = SentenceTransformer(str(tmp_path / "static"), device="cpu")
    assert np.abs(loaded.encode(text[:20]) - ours).max() < 1e-5
    assert np.abs(st.encode(text[:20]) - ours).max() < 1e-5


def test_a_linear_map_of_the_token_vectors_maps_every_sentence_vector_exactly(static_and_texts):
    from mdistill.models.split import gram_sums, linear_from_sums
    from mdistill.models.static import with_linear_map

    static, pairs = static_and_texts
    texts = list(pairs.text[:120])
    weighted = with_sif_weights(static, token_counts(static.tokenizer, texts, len(static.embedding)))
    x = weighted.encode(texts, normalize=False)
    # targets that are an exact linear image of the unnormalised sentence vectors: the fit finds
    # the map, and folded into the token vectors it gives the normalised targets
    w_true = np.random.default_rng(0).normal(size=(static.dim, 24))
    y = x @ w_true
    w = linear_from_sums(gram_sums(x, y))
    assert w.shape == (static.dim, 24)
    mapped = with_linear_map(weighted, w)
    want = y / np.linalg.norm(y, axis=1, keepdims=True)
    assert np.abs(mapped.encode(texts) - want).max() < 1e-4
    assert mapped.weights is weighted.weights
    # the ridge shrinks the map (and only makes sense relative to x'x's scale)
    assert np.linalg.norm(linear_from_sums(gram_sums(x, y), ridge=1.0)) < np.linalg.norm(w)


def test_a_unigram_vocabulary_keeps_its_pieces_and_its_unknown_piece_adds_nothing(tmp_path, pairs):
    """model2vec's distillation renumbers a Unigram vocabulary without moving ``unk_id`` (on a
    trimmed e5 it pointed at ``.``, dropped from every sentence); after ``distil_static`` the id is
    the unknown piece's, every other piece is kept, and the unknown vector is zero (model2vec
    skips it, sentence-transformers averages it in: after normalising, the same vector)."""
    from test_trim_vocab import _unigram_model

    texts = list(pairs.en) + list(pairs.text)
    static = distil_static(_unigram_model(tmp_path / "uni", texts))
    unk = static.tokenizer.token_to_id("<unk>")
    assert static.unk_token_id == unk
    assert not np.asarray(static.embedding[unk]).any()
    sample = texts[:50]
    kept = [[i for i in e.ids if i != unk] for e in static.tokenizer.encode_batch(sample, add_special_tokens=False)]
    assert static.tokenize(sample) == kept
