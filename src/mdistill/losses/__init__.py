"""Distillation losses, one per file, each citing its source."""

from mdistill.losses.CosineLoss import CosineLoss
from mdistill.losses.DistillationLoss import DistillationLoss
from mdistill.losses.KLDivLoss import KLDivLoss
from mdistill.losses.MSELoss import MSELoss

__all__ = ["CosineLoss", "DistillationLoss", "KLDivLoss", "MSELoss"]
