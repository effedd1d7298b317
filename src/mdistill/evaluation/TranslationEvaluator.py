"""Translation retrieval: top-1 accuracy of finding a sentence's translation, both directions.

The convention of sentence-transformers' ``TranslationEvaluator`` (Reimers & Gurevych 2020,
"Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation",
https://arxiv.org/abs/2004.09813): the same model embeds both sides; for each source sentence
the nearest target (cosine) must be its own translation, and vice versa. Ties go to the lower
index (``argmax``), as in sentence-transformers.

Inputs: ``src`` [n, dim] and ``tgt`` [n, dim], row i of one the translation of row i of the
other (mdistill: src = English sources, tgt = translations).

Example::

    >>> import numpy as np
    >>> en = np.eye(3); xx = en[[0, 2, 1]]
    >>> TranslationEvaluator.compute(en, xx)["src2trg_accuracy"]
    0.3333333333333333
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mdistill.evaluation.functional import embed, top1


class TranslationEvaluator:
    def __init__(self, source_sentences: Sequence[str], target_sentences: Sequence[str], *, batch_size: int = 64, name: str = ""):
        if len(source_sentences) != len(target_sentences):
            raise ValueError("source and target sentences must pair up one to one")
        self.source_sentences, self.target_sentences = list(source_sentences), list(target_sentences)
        self.batch_size, self.name = batch_size, name

    @staticmethod
    def compute(src: np.ndarray, tgt: np.ndarray) -> dict[str, float]:
        """Top-1 src->tgt, tgt->src and their mean (the keys of sentence-transformers)."""
        s2t, t2s = top1(src, tgt), top1(tgt, src)
        return {"src2trg_accuracy": s2t, "trg2src_accuracy": t2s, "mean_accuracy": (s2t + t2s) / 2}

    def __call__(self, model) -> dict[str, float]:
        """Encode both sides with ``model`` (a SentenceTransformer) and compute."""
        return self.compute(
            embed(model, self.source_sentences, batch_size=self.batch_size), embed(model, self.target_sentences, batch_size=self.batch_size)
        )
