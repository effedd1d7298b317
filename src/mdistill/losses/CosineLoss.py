"""Cosine distillation loss: 1 − cos(student, teacher), averaged over the batch.

Only the direction of the student's vector is pulled towards the teacher's, which is what
retrieval with normalised embeddings (cosine / dot product) uses; the norm is left free. Used as
an alternative to MSE in the same parallel-data setting as Reimers & Gurevych (2020),
https://arxiv.org/abs/2004.09813 (their CosineSimilarityLoss is the STS variant of the idea).

Inputs: ``student`` [batch, dim] and ``teacher`` [batch, dim]: each row's target is the teacher's
vector of the row's English source.

Example::

    >>> import torch
    >>> loss = CosineLoss()
    >>> loss(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 0.0], [1.0, 0.0]])).item()
    0.5
"""

import torch
from torch import nn


class CosineLoss(nn.Module):
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (1 - nn.functional.cosine_similarity(student, teacher.to(student.dtype), dim=-1)).mean()
