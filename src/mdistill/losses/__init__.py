"""Distillation losses, one per file, each citing its source."""

from mdistill.losses.AttentionRelationLoss import AttentionRelationLoss, capture_qkv
from mdistill.losses.CosineLoss import CosineLoss
from mdistill.losses.DistillationLoss import DistillationLoss
from mdistill.losses.HiddenStateLoss import HiddenStateLoss, uniform_layer_map
from mdistill.losses.KLDivLoss import KLDivLoss
from mdistill.losses.MSELoss import MSELoss
from mdistill.losses.TeacherContrastiveLoss import TeacherContrastiveLoss


def embedding_loss(name: str, *, contrastive_weight: float = 1.0, contrastive_temperature: float = 0.1):
    """The embedding-distillation loss ``train.loss`` names: ``mse``, ``cosine`` or ``mse+contrastive``."""
    if name == "mse+contrastive":
        return TeacherContrastiveLoss(MSELoss(), weight=contrastive_weight, temperature=contrastive_temperature)
    if name in ("mse", "cosine"):
        return MSELoss() if name == "mse" else CosineLoss()
    raise ValueError(f"unknown embedding loss {name!r} (mse, cosine, mse+contrastive)")


__all__ = [
    "AttentionRelationLoss",
    "CosineLoss",
    "DistillationLoss",
    "HiddenStateLoss",
    "KLDivLoss",
    "MSELoss",
    "TeacherContrastiveLoss",
    "capture_qkv",
    "embedding_loss",
    "uniform_layer_map",
]
