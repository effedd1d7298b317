"""Distillation losses, one per file, each citing its source."""

from mdistill.losses.AttentionRelationLoss import AttentionRelationLoss, capture_qkv
from mdistill.losses.CosineLoss import CosineLoss
from mdistill.losses.DistillationLoss import DistillationLoss
from mdistill.losses.HiddenStateLoss import HiddenStateLoss, uniform_layer_map
from mdistill.losses.KLDivLoss import KLDivLoss
from mdistill.losses.MSELoss import MSELoss
from mdistill.losses.TeacherContrastiveLoss import TeacherContrastiveLoss

__all__ = [
    "AttentionRelationLoss",
    "CosineLoss",
    "DistillationLoss",
    "HiddenStateLoss",
    "KLDivLoss",
    "MSELoss",
    "TeacherContrastiveLoss",
    "capture_qkv",
    "uniform_layer_map",
]
