"""Teacher-space retrieval: student(xx) -> nearest teacher(en), top-1.

The property a distilled student is bought for (Reimers & Gurevych 2020,
https://arxiv.org/abs/2004.09813): an English index already built with the teacher can be queried
in any language. For each translation, the student's vector must be nearest (cosine) to the
teacher's vector of its own English source among all English sources of the set. Defined only when
the student's dimension equals the teacher's; otherwise the metric is ``None``.

Inputs: ``student_xx`` [n, dim] (the student's vectors of the translations) and ``teacher_en``
[m, dim] (the index: the teacher's vectors of the English sources). Row i of ``student_xx`` belongs
to row i of ``teacher_en`` (m = n), or to row ``answers[i]`` when given (one index shared by the
translations of several languages). With ``student_en`` also given, ``teacher_space_top1_en`` is
the same for the English sentences.

Example::

    >>> import numpy as np
    >>> t = np.eye(3)
    >>> TeacherSpaceEvaluator.compute(t[[0, 1, 1]], t)["teacher_space_top1"]
    0.6666666666666666
    >>> TeacherSpaceEvaluator.compute(t[[0, 1, 1, 2]], t, answers=[0, 1, 2, 2])["teacher_space_top1"]
    0.75
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mdistill.evaluation.functional import embed, top1


class TeacherSpaceEvaluator:
    def __init__(self, english: Sequence[str], translations: Sequence[str], teacher_model, *, batch_size: int = 64, name: str = ""):
        if len(english) != len(translations):
            raise ValueError("english and translations must pair up one to one")
        self.english, self.translations, self.batch_size, self.name = list(english), list(translations), batch_size, name
        self.teacher_en = embed(teacher_model, self.english, batch_size=batch_size)  # the index, computed once

    @staticmethod
    def compute(
        student_xx: np.ndarray,
        teacher_en: np.ndarray,
        student_en: np.ndarray | None = None,
        *,
        answers: Sequence[int] | np.ndarray | None = None,
    ) -> dict[str, float | None]:
        ok = student_xx.shape[1] == teacher_en.shape[1]
        out = {"teacher_space_top1": top1(student_xx, teacher_en, answers) if ok else None}
        if student_en is not None:
            out["teacher_space_top1_en"] = top1(student_en, teacher_en, answers) if ok else None
        return out

    def __call__(self, model) -> dict[str, float | None]:
        return self.compute(
            embed(model, self.translations, batch_size=self.batch_size),
            self.teacher_en,
            embed(model, self.english, batch_size=self.batch_size),
        )
