"""Evaluators on numpy embedding matrices; each also encodes with a SentenceTransformer when
called with a model. One concept per file; ``table`` builds the run's per-language table from
their ``compute`` methods, ``functional`` holds the vector primitives they share."""

from mdistill.evaluation.BitextMiningEvaluator import BitextMiningEvaluator
from mdistill.evaluation.ClassificationEvaluator import ClassificationEvaluator
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
]
