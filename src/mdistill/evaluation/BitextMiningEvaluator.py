"""Bitext mining F1 with ratio-margin scoring, as in LASER and the BUCC shared task.

Artetxe & Schwenk 2019, "Margin-based Parallel Corpus Mining with Multilingual Sentence
Embeddings", ACL, https://arxiv.org/abs/1811.01136; BUCC 2017/2018 (Zweigenbaum et al.). Given a
pool of source and target sentences, only some of which are translations of each other (the
rest are distractors), find the pairs. Raw cosine is not comparable across sentences (hubs are
close to everything), so each candidate is scored by the ratio margin

    score(x, y) = cos(x, y) / ( sum_{z in NN_k(x)} cos(x, z) / 2k + sum_{z in NN_k(y)} cos(y, z) / 2k )

with NN_k(x) the k nearest targets of x and NN_k(y) the k nearest sources of y (k = 4). Candidates
(LASER's retrieval modes): ``forward`` (each source's best target), ``backward`` (each target's
best source), ``intersection`` (pairs found both ways), ``max_score`` (default: forward and
backward pooled, then greedily by score, each sentence used once). The threshold on the score is
chosen on the data to maximise F1 (as the BUCC evaluation scripts do on the training gold), or
given. Reports F1, precision, recall, the threshold, and counts.

Inputs: ``src`` [n_src, dim] and ``tgt`` [n_tgt, dim] (one model's vectors of the two sides of the
pool) and ``gold``: the true (source index, target index) pairs.

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> base = rng.normal(size=(6, 16))
    >>> src = np.vstack([base[:4], rng.normal(size=(2, 16))])   # 4 true pairs + 2 distractors
    >>> tgt = np.vstack([base[:4] + 0.01, rng.normal(size=(3, 16))])
    >>> BitextMiningEvaluator.compute(src, tgt, [(i, i) for i in range(4)])["f1"]
    1.0
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from mdistill.evaluation.functional import embed, unit

Mode = Literal["max_score", "forward", "backward", "intersection"]


class BitextMiningEvaluator:
    def __init__(
        self,
        src_sentences: Sequence[str],
        tgt_sentences: Sequence[str],
        gold: Iterable[tuple[int, int]],
        *,
        k: int = 4,
        mode: Mode = "max_score",
        threshold: float | None = None,
        batch_size: int = 64,
        name: str = "",
    ):
        self.src_sentences, self.tgt_sentences, self.gold = list(src_sentences), list(tgt_sentences), [tuple(g) for g in gold]
        self.k, self.mode, self.threshold, self.batch_size, self.name = k, mode, threshold, batch_size, name

    @staticmethod
    def knn(x: np.ndarray, y: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """For each row of ``x``, the cosine similarities [n, k] and indices [n, k] of its ``k``
        nearest rows of ``y``, best first (row blocks bound the memory of the similarity matrix)."""
        xu, yu, k = unit(x), unit(y), min(k, len(y))
        sims, inds = np.empty((len(x), k), np.float32), np.empty((len(x), k), np.int64)
        for s in range(0, len(x), block):
            sim = xu[s : s + block] @ yu.T
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            psim = np.take_along_axis(sim, part, 1)
            order = np.argsort(-psim, axis=1, kind="stable")
            inds[s : s + block], sims[s : s + block] = np.take_along_axis(part, order, 1), np.take_along_axis(psim, order, 1)
        return sims, inds

    @classmethod
    def mine(cls, src: np.ndarray, tgt: np.ndarray, *, k: int = 4, mode: Mode = "max_score") -> list[tuple[int, int, float]]:
        """Candidate pairs (source index, target index, margin score), best first."""
        x2y_sim, x2y_ind = cls.knn(src, tgt, k)
        y2x_sim, y2x_ind = cls.knn(tgt, src, k)
        x_mean, y_mean = x2y_sim.mean(1), y2x_sim.mean(1)  # each sentence's neighbourhood density
        # ratio margin of every kNN candidate: cos / ((density of x + density of y) / 2)
        # (clipped: a pair of sentences orthogonal to everything would divide 0 by 0)
        fwd = x2y_sim / np.maximum((x_mean[:, None] + y_mean[x2y_ind]) / 2, 1e-12)
        bwd = y2x_sim / np.maximum((y_mean[:, None] + x_mean[y2x_ind]) / 2, 1e-12)
        fb, bb = fwd.argmax(1), bwd.argmax(1)
        forward = [(i, int(x2y_ind[i, fb[i]]), float(fwd[i, fb[i]])) for i in range(len(src))]
        backward = [(int(y2x_ind[j, bb[j]]), j, float(bwd[j, bb[j]])) for j in range(len(tgt))]
        if mode == "forward":
            cands = forward
        elif mode == "backward":
            cands = backward
        elif mode == "intersection":
            b = {(i, j) for i, j, _ in backward}
            cands = [c for c in forward if (c[0], c[1]) in b]
        elif mode == "max_score":
            cands, seen_src, seen_tgt = [], set(), set()
            for i, j, s in sorted(forward + backward, key=lambda c: -c[2]):
                if i not in seen_src and j not in seen_tgt:  # each sentence in at most one pair
                    seen_src.add(i)
                    seen_tgt.add(j)
                    cands.append((i, j, s))
        else:
            raise ValueError(f"unknown mode {mode!r}")
        return sorted(cands, key=lambda c: -c[2])

    @staticmethod
    def score_candidates(cands: list[tuple[int, int, float]], gold: Iterable[tuple[int, int]], threshold: float | None = None) -> dict:
        """F1/precision/recall of the candidates above ``threshold``; ``None``: the threshold
        (midway between two consecutive candidate scores) that maximises F1 on this gold."""
        gold = {(int(i), int(j)) for i, j in gold}
        cands = sorted(cands, key=lambda c: -c[2])
        hits = np.cumsum([(i, j) in gold for i, j, _ in cands]) if cands else np.zeros(0)
        if threshold is None:
            n = np.arange(1, len(cands) + 1)
            f1s = 2 * hits / (n + len(gold)) if len(cands) else np.zeros(0)  # 2PR/(P+R) = 2 tp / (|pred| + |gold|)
            best = int(f1s.argmax()) + 1 if len(cands) and f1s.max() > 0 else 0
            if best == 0:
                threshold = float(cands[0][2]) + 1.0 if cands else 0.0
            else:
                threshold = (cands[best - 1][2] + cands[best][2]) / 2 if best < len(cands) else cands[-1][2] - 1e-6
        kept = sum(s > threshold for _, _, s in cands)
        tp = int(hits[kept - 1]) if kept else 0
        p = tp / kept if kept else 0.0
        r = tp / len(gold) if gold else 0.0
        return {
            "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "precision": p,
            "recall": r,
            "threshold": float(threshold),
            "n_gold": len(gold),
            "n_mined": kept,
            "n_correct": tp,
        }

    @classmethod
    def compute(
        cls,
        src: np.ndarray,
        tgt: np.ndarray,
        gold: Iterable[tuple[int, int]],
        *,
        k: int = 4,
        mode: Mode = "max_score",
        threshold: float | None = None,
    ) -> dict:
        return cls.score_candidates(cls.mine(src, tgt, k=k, mode=mode), gold, threshold)

    @staticmethod
    def pool_from_pairs(n: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """A mining pool from ``n`` parallel pairs, with distractors on both sides: pairs i with
        i % 4 in {0, 1} stay pairs, i % 4 == 2 contribute only their source, i % 4 == 3 only their
        target. Returns (source rows, target rows, gold pairs as pool indices)."""
        idx = np.arange(n)
        src_rows, tgt_rows = idx[idx % 4 != 3], idx[idx % 4 != 2]
        where_tgt = {int(r): j for j, r in enumerate(tgt_rows)}
        gold = [(i, where_tgt[int(r)]) for i, r in enumerate(src_rows) if r % 4 < 2]
        return src_rows, tgt_rows, gold

    @classmethod
    def pool_f1(cls, src: np.ndarray, tgt: np.ndarray, *, k: int = 4) -> float | None:
        """Mining F1 on ``pool_from_pairs(len(src))`` of aligned pairs (src[i], tgt[i]); ``None``
        below 8 pairs."""
        if len(src) < 8:
            return None
        s, t, gold = cls.pool_from_pairs(len(src))
        return cls.compute(src[s], tgt[t], gold, k=k)["f1"]

    def __call__(self, model) -> dict:
        src = embed(model, self.src_sentences, batch_size=self.batch_size)
        tgt = embed(model, self.tgt_sentences, batch_size=self.batch_size)
        return self.compute(src, tgt, self.gold, k=self.k, mode=self.mode, threshold=self.threshold)
