"""Retrieval and distance metrics on embedding matrices (numpy, no Ray).

Conventions follow sentence-transformers' ``TranslationEvaluator`` (cosine, top-1, both
directions) and ``MSEEvaluator`` (mean squared error x 100).
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def top1(queries: np.ndarray, keys: np.ndarray) -> float:
    """Fraction of queries whose nearest key (cosine) is the key at the same index."""
    sim = _unit(queries) @ _unit(keys).T
    return float((sim.argmax(1) == np.arange(len(queries))).mean())


def mse100(student: np.ndarray, teacher: np.ndarray) -> float:
    return float(((student - teacher) ** 2).mean() * 100)


def language_metrics(xx: np.ndarray, en: np.ndarray, teacher_en: np.ndarray) -> dict[str, float]:
    """The per-language table row for one model.

    ``xx``/``en``: the model's vectors of the translations and of their English sources;
    ``teacher_en``: the teacher's vectors of the English sources (the index users query).
    """
    return {
        "teacher_space_top1": top1(xx, teacher_en),
        "translation_top1_xx2en": top1(xx, en),
        "translation_top1_en2xx": top1(en, xx),
        "mse100": mse100(xx, teacher_en),
    }
