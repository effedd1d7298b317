"""MSE x 100 between the student's and the teacher's vectors.

The distillation objective of Reimers & Gurevych 2020 (https://arxiv.org/abs/2004.09813) and
sentence-transformers' ``MSEEvaluator`` convention: mean over all elements of
``(teacher(source) - student(target))**2``, times 100. (sentence-transformers >= 3 reports it as
``negative_mse`` = -MSE x 100 so that higher is better; mdistill reports the positive value,
lower is better.) ``None`` when the dimensions differ.

Inputs: ``student`` [n, dim] (the student's vectors of the targets: translations, or English) and
``teacher`` [n, dim] (the teacher's vectors of the English sources, row i paired with row i).

Example::

    >>> import numpy as np
    >>> MSEEvaluator.compute(np.zeros((1, 2)), np.ones((1, 2)))["mse100"]
    100.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mdistill.evaluation.functional import embed, mse100


class MSEEvaluator:
    def __init__(
        self, source_sentences: Sequence[str], target_sentences: Sequence[str], teacher_model, *, batch_size: int = 64, name: str = ""
    ):
        if len(source_sentences) != len(target_sentences):
            raise ValueError("source and target sentences must pair up one to one")
        self.target_sentences, self.batch_size, self.name = list(target_sentences), batch_size, name
        self.source_embeddings = embed(teacher_model, list(source_sentences), batch_size=batch_size)  # computed once

    @staticmethod
    def compute(student: np.ndarray, teacher: np.ndarray) -> dict[str, float | None]:
        return {"mse100": mse100(student, teacher) if student.shape == teacher.shape else None}

    def __call__(self, model) -> dict[str, float | None]:
        return self.compute(embed(model, self.target_sentences, batch_size=self.batch_size), self.source_embeddings)
