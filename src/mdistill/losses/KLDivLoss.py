"""Logit distillation: KL divergence of temperature-softened distributions, scaled by T².

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531. With p_T = softmax(teacher / T) and q_T = softmax(student / T)::

    L = T² · KL(p_T ‖ q_T) = T² · Σ p_T (log p_T − log q_T)     (mean over the batch)

The T² factor keeps the gradient magnitude of the soft targets independent of T (their gradients
scale as 1/T²), so the loss can be blended with a hard-label loss at any temperature.

Inputs: ``student`` and ``teacher`` logits [batch, classes] (raw, before softmax).

Example::

    >>> import torch
    >>> loss = KLDivLoss(temperature=2.0)
    >>> loss(torch.zeros(1, 3), torch.zeros(1, 3)).item()  # same distribution: no loss
    0.0
"""

import torch
from torch import nn


class KLDivLoss(nn.Module):
    def __init__(self, temperature: float = 2.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_q = nn.functional.log_softmax(student / t, dim=-1)
        log_p = nn.functional.log_softmax(teacher.to(student.dtype) / t, dim=-1)
        return nn.functional.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * t * t
