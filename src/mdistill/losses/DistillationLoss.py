"""The classic blend of distillation and task loss: α · L_distill + (1 − α) · L_task.

Hinton et al. (2015), https://arxiv.org/abs/1503.02531: the student learns from the teacher's
softened logits (``KLDivLoss``, already scaled by T²) and from the hard labels (cross-entropy at
temperature 1). α = 1 is pure distillation, α = 0 plain supervised training.

Inputs: ``student`` and ``teacher`` logits [batch, classes], ``labels`` [batch] (class indices).

Example::

    >>> import torch
    >>> loss = DistillationLoss(alpha=0.0, temperature=2.0)   # hard labels only
    >>> round(loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1])).item(), 4)
    0.6931
"""

import torch
from torch import nn

from mdistill.losses.KLDivLoss import KLDivLoss


class DistillationLoss(nn.Module):
    def __init__(self, alpha: float = 0.5, temperature: float = 2.0):
        super().__init__()
        if not 0 <= alpha <= 1:
            raise ValueError("alpha must be in [0, 1]")
        self.alpha = alpha
        self.kl = KLDivLoss(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.kl(student, teacher) + (1 - self.alpha) * nn.functional.cross_entropy(student, labels)
