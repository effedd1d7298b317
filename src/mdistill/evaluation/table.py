"""The per-language metrics table of a run (and of ``mdistill eval``), built from the evaluator
classes' ``compute`` on cached vectors, so the run and the evaluators are one API.

A row per language: ``teacher_space_top1`` (``TeacherSpaceEvaluator``), translation retrieval
both ways (``TranslationEvaluator``, English as the source side), ``mse100``
(``MSEEvaluator``) and ``bitext_f1`` (``BitextMiningEvaluator.pool_f1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from mdistill.evaluation.BitextMiningEvaluator import BitextMiningEvaluator
from mdistill.evaluation.MSEEvaluator import MSEEvaluator
from mdistill.evaluation.TeacherSpaceEvaluator import TeacherSpaceEvaluator
from mdistill.evaluation.TranslationEvaluator import TranslationEvaluator
from mdistill.report.schema import METRIC_NAMES, LanguageRow, Metrics, MetricsTable


def language_row(xx: np.ndarray, en: np.ndarray, teacher_en: np.ndarray, *, bitext: bool = True) -> Metrics:
    """One model on one language: ``xx``/``en`` its vectors of the translations and of their
    English sources, ``teacher_en`` the teacher's vectors of those sources (the index)."""
    translation = TranslationEvaluator.compute(en, xx)
    return Metrics(
        teacher_space_top1=TeacherSpaceEvaluator.compute(xx, teacher_en)["teacher_space_top1"],
        translation_top1_xx2en=translation["trg2src_accuracy"],
        translation_top1_en2xx=translation["src2trg_accuracy"],
        mse100=MSEEvaluator.compute(xx, teacher_en)["mse100"],
        bitext_f1=BitextMiningEvaluator.pool_f1(en, xx) if bitext else None,
    )


def metrics_table(
    pairs: pa.Table, vectors: Mapping[str, Mapping[str, np.ndarray]], teacher_en: Mapping[str, np.ndarray], *, bitext: bool = True
) -> MetricsTable:
    """``pairs``: one row per (en, lang, text). ``vectors[model]`` maps each English source and
    translation to that model's vector; ``teacher_en`` maps each English source to the teacher's."""
    en, lang, text = (pairs.column(c).to_pylist() for c in ("en", "lang", "text"))
    table: MetricsTable = {}
    for lg in sorted(set(lang)):
        idx = [i for i, x in enumerate(lang) if x == lg]
        t_en = np.stack([teacher_en[en[i]] for i in idx])
        models = {
            name: language_row(np.stack([v[text[i]] for i in idx]), np.stack([v[en[i]] for i in idx]), t_en, bitext=bitext)
            for name, v in vectors.items()
        }
        table[lg] = LanguageRow(n=len(idx), models=models)
    return table


def summarize(table: MetricsTable) -> dict[str, Metrics]:
    """Per model, each metric's mean over languages (undefined values left out; ``None`` if all are)."""
    acc: dict[str, dict[str, list[float]]] = {}
    for row in table.values():
        for model, m in row.models.items():
            for k in METRIC_NAMES:
                v = getattr(m, k)
                acc.setdefault(model, {}).setdefault(k, [])
                if v is not None:
                    acc[model][k].append(v)
    return {model: Metrics(**{k: float(np.mean(vs)) if vs else None for k, vs in ms.items()}) for model, ms in acc.items()}


def beats_baselines(table: MetricsTable, model: str, baselines: Sequence[str], metric: str = "teacher_space_top1") -> dict[str, bool]:
    """Per language: does ``model`` score above every baseline present (undefined counts as -inf)?"""

    def value(row: LanguageRow, m: str) -> float:
        v = getattr(row.models[m], metric)
        return -np.inf if v is None else v

    return {lang: all(value(row, model) > value(row, b) for b in baselines if b in row.models) for lang, row in table.items()}


def retained(table: MetricsTable, model: str, reference: str, metric: str) -> dict[str, float | None]:
    """Per language: ``model``'s ``metric`` as a fraction of ``reference``'s (compression: the
    student's own-space translation retrieval or bitext F1 over the teacher's); None if undefined."""
    out: dict[str, float | None] = {}
    for lang, row in table.items():
        a, b = getattr(row.models[model], metric), getattr(row.models[reference], metric)
        out[lang] = a / b if a is not None and b else None
    return out
