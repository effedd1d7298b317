"""MSE distillation loss (Reimers & Gurevych, 2020).

"Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation",
EMNLP 2020, https://arxiv.org/abs/2004.09813. The student learns
``student(src) ≈ teacher(src)`` and ``student(tgt) ≈ teacher(src)`` for parallel pairs
(src, tgt); summed over a batch holding both sides, it is the mean squared error of each
student vector to the teacher vector of its English source.

Inputs: ``student`` [batch, dim] and ``teacher`` [batch, dim]; each row of the batch is one
sentence (English source or its translation) and its target is the teacher's vector of the
English source.

Example::

    >>> import torch
    >>> loss = MSELoss()
    >>> loss(torch.zeros(2, 3), torch.ones(2, 3)).item()
    1.0
"""

import torch
from torch import nn


class MSELoss(nn.Module):
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(student, teacher.to(student.dtype))
