"""Semantic textual similarity: Spearman correlation of cosine similarity with gold scores.

The STS benchmark convention (Cer et al. 2017, SemEval STS; Reimers & Gurevych 2019,
Sentence-BERT, https://arxiv.org/abs/1908.10084, and sentence-transformers'
``EmbeddingSimilarityEvaluator``): embed both sentences of each scored pair, take their cosine
similarity, and report the Spearman rank correlation (x 100 is common in papers; mdistill keeps
it in [-1, 1]) with the human scores; Pearson alongside. Ties get average ranks.

Inputs: ``emb1`` [n, dim], ``emb2`` [n, dim] (the vectors of s1 and s2) and ``scores`` [n].

Example::

    >>> import numpy as np
    >>> a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]); b = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> STSEvaluator.compute(a, b, [5.0, 2.5, 0.0])["spearman_cosine"]
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mdistill.evaluation.functional import embed, unit


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]  # first index of each run of equal values
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # mean of ranks start+1 .. end
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64) - np.mean(a), np.asarray(b, np.float64) - np.mean(b)
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else float("nan")


class STSEvaluator:
    def __init__(
        self, sentences1: Sequence[str], sentences2: Sequence[str], scores: Sequence[float], *, batch_size: int = 64, name: str = ""
    ):
        if not len(sentences1) == len(sentences2) == len(scores):
            raise ValueError("sentences1, sentences2 and scores must have the same length")
        self.sentences1, self.sentences2, self.scores = list(sentences1), list(sentences2), np.asarray(scores, dtype=np.float64)
        self.batch_size, self.name = batch_size, name

    @staticmethod
    def compute(emb1: np.ndarray, emb2: np.ndarray, scores: Sequence[float]) -> dict[str, float]:
        cos = (unit(emb1) * unit(emb2)).sum(1).astype(np.float64)
        scores = np.asarray(scores, dtype=np.float64)
        return {"spearman_cosine": pearson(rankdata(cos), rankdata(scores)), "pearson_cosine": pearson(cos, scores), "n": len(scores)}

    def __call__(self, model) -> dict[str, float]:
        return self.compute(
            embed(model, self.sentences1, batch_size=self.batch_size),
            embed(model, self.sentences2, batch_size=self.batch_size),
            self.scores,
        )
