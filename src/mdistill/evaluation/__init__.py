"""Evaluators on numpy embedding matrices (each also encodes with a SentenceTransformer when
called with a model). One concept per file; ``metrics.language_metrics`` is the run's table row."""

from mdistill.evaluation.BitextMiningEvaluator import BitextMiningEvaluator
from mdistill.evaluation.ClassificationEvaluator import ClassificationEvaluator
from mdistill.evaluation.metrics import language_metrics, mse100, top1
from mdistill.evaluation.MSEEvaluator import MSEEvaluator
from mdistill.evaluation.STSEvaluator import STSEvaluator
from mdistill.evaluation.TeacherSpaceEvaluator import TeacherSpaceEvaluator
from mdistill.evaluation.TranslationEvaluator import TranslationEvaluator

__all__ = [
    "BitextMiningEvaluator",
    "ClassificationEvaluator",
    "MSEEvaluator",
    "STSEvaluator",
    "TeacherSpaceEvaluator",
    "TranslationEvaluator",
    "language_metrics",
    "mse100",
    "top1",
]
