"""Teacher-space contrastive loss: each student vector must be nearer its own teacher target than
the batch's other teacher targets (InfoNCE with in-batch negatives, van den Oord et al. 2018,
https://arxiv.org/abs/1807.03748; the multiple-negatives ranking objective of Henderson et al.
2017, https://arxiv.org/abs/1705.00652, with the teacher's fixed vectors as the candidates).

Why beside MSE (Reimers & Gurevych 2020, https://arxiv.org/abs/2004.09813): MSE pulls every
coordinate towards the target but says nothing about the neighbours a retrieval confuses it with;
teacher-space top-1 (student(xx) -> nearest teacher(en)) is exactly this loss's ranking. The
``base`` loss (MSE by default) keeps the absolute position, so vectors stay comparable with an
index the teacher built.

Inputs: ``student`` [batch, dim] and ``teacher`` [batch, dim], each row's target the teacher's
vector of its English source. Rows sharing a source (the English row and its translations) share
a target: candidates are the batch's distinct targets, so a sibling is never a negative.

Example::

    >>> import torch
    >>> t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # rows 0 and 2: one source
    >>> loss = TeacherContrastiveLoss(base=None, temperature=1.0)
    >>> round(loss(t, t).item(), 4)  # each row on its target, cos 1 vs 0: -log(e / (e + 1))
    0.3133
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TeacherContrastiveLoss(nn.Module):
    def __init__(self, base: nn.Module | None = None, weight: float = 1.0, temperature: float = 0.1):
        super().__init__()
        self.base, self.weight, self.temperature = base, weight, temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = teacher.to(student.dtype)
        targets, label = torch.unique(teacher, dim=0, return_inverse=True)  # distinct sources of the batch
        logits = F.normalize(student, dim=-1) @ F.normalize(targets, dim=-1).T / self.temperature
        loss = self.weight * F.cross_entropy(logits, label)
        return loss if self.base is None else self.base(student, teacher) + loss
