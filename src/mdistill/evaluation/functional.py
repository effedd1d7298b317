"""Vector primitives the evaluators share (numpy, no Ray, no evaluator imports).

Conventions follow sentence-transformers: cosine similarity on float32, top-1 by ``argmax``
(ties to the lower index), MSE x 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def cos_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] cosine similarities, float32."""
    return unit(a) @ unit(b).T


def top1(queries: np.ndarray, keys: np.ndarray, answers: Sequence[int] | np.ndarray | None = None) -> float:
    """Fraction of queries whose nearest key (cosine) is their answer: the key at the same index,
    or ``answers[i]`` when given (an index with fewer keys than queries)."""
    want = np.arange(len(queries)) if answers is None else np.asarray(answers)
    return float((cos_sim(queries, keys).argmax(1) == want).mean())


def mse100(student: np.ndarray, teacher: np.ndarray) -> float:
    return float(((np.asarray(student, dtype=np.float32) - np.asarray(teacher, dtype=np.float32)) ** 2).mean() * 100)


def embed(model, texts: Sequence[str], *, batch_size: int = 64, prompt: str | None = None) -> np.ndarray:
    """A SentenceTransformer's vectors of ``texts`` (its default prompt unless ``prompt``): the
    evaluators' bridge from a model to numpy, through ``mdistill.encode.encode_batch``."""
    from mdistill.encode import encode_batch

    return encode_batch(model, list(texts), batch_size=batch_size, prompt=prompt)
