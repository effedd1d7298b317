"""Static (Model2Vec-style) students: one vector per token, a sentence is the weighted mean.

The token vectors are distilled from a transformer with ``model2vec`` (each vocabulary piece
passed through the model, mean-pooled: Tulkens & van Dongen, "Model2Vec", 2024), no PCA (the
student stays in the teacher's dimension, so it can be trained on the cached teacher vectors
and exported without a head). Token weights are SIF (Arora, Liang & Ma, "A Simple but
Tough-to-Beat Baseline for Sentence Embeddings", ICLR 2017): ``a / (a + p(w))`` with ``p(w)``
the piece's frequency **in the corpus** (counted with the static model's own tokenizer), not
model2vec's rank-Zipf estimate; a piece never seen in the corpus gets weight 1.

The export is model2vec's own format (``StaticModel.save_pretrained``), which model2vec and
sentence-transformers (``StaticEmbedding`` + ``Normalize``) both load.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

DEFAULT_SIF_A = 1e-3


def distil_static(model_path: str | Path):
    """Token vectors of a sentence-transformers (or plain HF) model, unweighted: a
    ``model2vec.StaticModel`` with the model's vocabulary and output dimension."""
    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(str(model_path)), AutoTokenizer.from_pretrained(str(model_path))
    # no PCA: the teacher's dimension; no SIF here: corpus frequencies are applied by with_sif_weights
    static = distill_from_model(model, tokenizer, pca_dims=None, sif_coefficient=None, quantize_to="float32")
    return _unk_repaired(static, tokenizer.unk_token)


def _unk_repaired(static, unk_token: str | None):
    """model2vec 0.10's distillation drops unused special pieces (``<s>``, ``</s>``) from a
    Unigram vocabulary and renumbers it, but keeps the old ``unk_id``: on a trimmed e5 that id is
    ``.``, which model2vec's ``encode`` and trainer then drop from every sentence while
    sentence-transformers' ``StaticEmbedding`` keeps it. Point ``unk_id`` at the unknown piece
    again, and zero its vector: model2vec skips unknown pieces, sentence-transformers averages
    them in, and a zero vector makes the two agree after normalisation."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(static.tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "Unigram" or model.get("unk_id") is None or unk_token is None:
        return static
    pieces = [p for p, _ in model["vocab"]]
    if unk_token not in pieces:
        return static
    model["unk_id"] = pieces.index(unk_token)
    static.tokenizer = Tokenizer.from_str(json.dumps(spec))  # _replaced's StaticModel reads unk_id from it
    vectors = np.array(static.embedding, dtype=np.float32)
    vectors[model["unk_id"]] = 0.0
    return _replaced(static, vectors, static.weights)


def token_counts(tokenizer, texts: Iterable[str], vocab_size: int) -> np.ndarray:
    """How often each piece of ``tokenizer`` (a ``tokenizers.Tokenizer``, e.g. ``StaticModel.tokenizer``)
    occurs in ``texts``, tokenised as the static model encodes them (no special tokens). Counts of
    several batches add up."""
    ids = [e.ids for e in tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]
    flat = np.fromiter((i for x in ids for i in x), dtype=np.int64)
    return np.bincount(flat, minlength=vocab_size)[:vocab_size]


def sif_weights(counts: np.ndarray, a: float = DEFAULT_SIF_A) -> np.ndarray:
    """``a / (a + p(w))``, ``p(w) = count / total``: frequent pieces count less. Unseen: 1."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("token counts must be a 1-d array of non-negative counts")
    if a <= 0:
        raise ValueError(f"SIF a must be > 0, got {a}")
    total = counts.sum()
    p = counts / total if total > 0 else np.zeros_like(counts)
    return (a / (a + p)).astype(np.float32)


def _replaced(static, vectors: np.ndarray, weights: np.ndarray | None):
    """``static`` with other token vectors and weights (its tokenizer and metadata kept),
    normalised: the teacher's sentence vectors are unit length."""
    from model2vec import StaticModel

    return StaticModel(
        vectors=np.asarray(vectors, dtype=np.float32),
        tokenizer=static.tokenizer,
        config=static.config,
        normalize=True,
        base_model_name=static.base_model_name,
        language=static.language,
        weights=weights,
    )


def with_sif_weights(static, counts: np.ndarray, a: float = DEFAULT_SIF_A):
    """The same token vectors with corpus SIF weights as the model's token weights (trainable
    when the model is fine-tuned; folded into the vectors at export)."""
    if len(counts) != len(static.embedding):
        raise ValueError(f"{len(counts)} token counts for a vocabulary of {len(static.embedding)} pieces")
    return _replaced(static, static.embedding, sif_weights(counts, a))


def with_linear_map(static, w: np.ndarray):
    """The token vectors mapped by ``w`` (d x k): a sentence vector is a weighted mean of token
    vectors, so mapping every token vector maps the mean exactly (the normalisation comes after).
    The linear-map baseline of a static student, and where its training starts."""
    return _replaced(static, np.asarray(static.embedding, dtype=np.float64) @ np.asarray(w, dtype=np.float64), static.weights)
