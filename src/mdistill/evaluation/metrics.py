"""Retrieval and distance metrics on embedding matrices (numpy, no Ray).

Conventions follow sentence-transformers' ``TranslationEvaluator`` (cosine, top-1, both
directions) and ``MSEEvaluator`` (mean squared error x 100). The evaluator classes in this
package (``TranslationEvaluator``, ``MSEEvaluator``, ``BitextMiningEvaluator``, ...) build on
these functions; ``language_metrics`` is the per-language row of the run's table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def cos_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] cosine similarities, float32 (as sentence-transformers computes them)."""
    return _unit(a) @ _unit(b).T


def top1(queries: np.ndarray, keys: np.ndarray) -> float:
    """Fraction of queries whose nearest key (cosine) is the key at the same index."""
    sim = cos_sim(queries, keys)
    return float((sim.argmax(1) == np.arange(len(queries))).mean())


def mse100(student: np.ndarray, teacher: np.ndarray) -> float:
    return float(((np.asarray(student, dtype=np.float32) - np.asarray(teacher, dtype=np.float32)) ** 2).mean() * 100)


def embed(model, texts: Sequence[str], *, batch_size: int = 64, prompt: str | None = None) -> np.ndarray:
    """Encode ``texts`` with a SentenceTransformer (its default prompt unless ``prompt``), float32.

    The thin bridge from a model to the numpy evaluators: ``mdistill.encode.encode_batch``,
    i.e. exactly the model's own pooling and normalisation, in token-length-sorted batches."""
    from mdistill.encode import encode_batch

    return encode_batch(model, list(texts), batch_size=batch_size, prompt=prompt)


def language_metrics(xx: np.ndarray, en: np.ndarray, teacher_en: np.ndarray, *, bitext: bool = True) -> dict[str, float | None]:
    """The per-language table row for one model.

    ``xx``/``en``: the model's vectors of the translations and of their English sources;
    ``teacher_en``: the teacher's vectors of the English sources (the index users query).
    Teacher-space top-1 and MSE need the model's dimension to equal the teacher's; otherwise they
    are ``None``. ``bitext``: also ``bitext_f1``, margin-based mining on a pool built from these
    pairs with distractors (``BitextMiningEvaluator.from_pairs``; ``None`` below 8 pairs).
    """
    same_dim = xx.shape[1] == teacher_en.shape[1]
    row: dict[str, float | None] = {
        "teacher_space_top1": top1(xx, teacher_en) if same_dim else None,
        "translation_top1_xx2en": top1(xx, en),
        "translation_top1_en2xx": top1(en, xx),
        "mse100": mse100(xx, teacher_en) if same_dim else None,
    }
    if bitext:
        from mdistill.evaluation.BitextMiningEvaluator import BitextMiningEvaluator

        row["bitext_f1"] = BitextMiningEvaluator.pool_f1(en, xx)
    return row


def summarize(table: dict) -> dict[str, dict[str, float | None]]:
    """``{model: {metric: mean over languages}}`` from a ``{lang: {"n": n, model: {metric: v}}}``
    table; ``None`` values (undefined metrics) are left out of the mean, ``None`` if all are."""
    acc: dict[str, dict[str, list]] = {}
    for row in table.values():
        for model, m in row.items():
            if isinstance(m, dict):
                for k, v in m.items():
                    acc.setdefault(model, {}).setdefault(k, []).append(v)
    return {
        model: {k: (float(np.mean([x for x in vs if x is not None])) if any(x is not None for x in vs) else None) for k, vs in ms.items()}
        for model, ms in acc.items()
    }
