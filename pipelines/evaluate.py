"""Evaluation recipe: per language on the dev split, every model in one table.

Models: the teacher alone, the untrained student, the linear map (least squares from the frozen
student's embeddings to the teacher's, fitted on the training pairs) and the trained student.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mdistill.evaluation.metrics import language_metrics


def evaluate_models(dev: pd.DataFrame, embeddings: dict[str, dict[str, np.ndarray]], teacher_en: dict[str, np.ndarray]) -> dict:
    """``dev``: one row per (en, lang, text) dev pair. ``embeddings[model]`` maps each of the
    texts (English and translations) to its vector; ``teacher_en`` maps English to the teacher's
    vector. Returns ``{lang: {model: metrics}}``."""
    table: dict = {}
    for lang, rows in dev.groupby("lang", sort=True):
        t_en = np.stack([teacher_en[e] for e in rows["en"]])
        table[lang] = {"n": len(rows)}
        for name, vecs in embeddings.items():
            xx = np.stack([vecs[x] for x in rows["text"]])
            en = np.stack([vecs[e] for e in rows["en"]])
            table[lang][name] = language_metrics(xx, en, t_en)
    return table


def beats_baselines(
    table: dict, model: str = "student", baselines=("teacher", "untrained", "linear_map"), metric: str = "teacher_space_top1"
) -> dict[str, bool]:
    return {lang: all(row[model][metric] > row[b][metric] for b in baselines if b in row) for lang, row in table.items()}
