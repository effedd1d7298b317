import numpy as np
import torch

from mdistill.evaluation.functional import mse100, top1
from mdistill.evaluation.table import language_row
from mdistill.losses import MSELoss


def test_mse_loss_by_hand():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert MSELoss()(s, t).item() == (1 + 4 + 1 + 1) / 4


def test_top1_and_mse100():
    keys = np.eye(4, dtype=np.float32)
    q = keys[[0, 1, 3, 2]]
    assert top1(q, keys) == 0.5
    assert mse100(keys, keys) == 0.0
    assert np.isclose(mse100(np.zeros((1, 2)), np.ones((1, 2))), 100.0)


def test_language_metrics_directions():
    en = np.eye(3, dtype=np.float32)
    xx = en[[0, 2, 1]]  # two translations swapped
    m = language_row(xx, en, en)
    assert m.teacher_space_top1 == m.translation_top1_xx2en == m.translation_top1_en2xx == 1 / 3
