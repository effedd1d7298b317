"""A fully trained student that also learns the teacher's intermediate layers (compression).

``LayerDistilledStudent`` is a ``FullStudent`` (same weights, same output, so checkpoints and the
export are unchanged) holding a frozen teacher beside it. In training mode each forward also runs
the teacher on the same tokens and stores ``aux``: ``hidden_weight`` · ``HiddenStateLoss``
(TinyBERT, student layer m -> teacher layer g(m)) + ``attention_weight`` ·
``AttentionRelationLoss`` (MiniLMv2, the last layer's Q/K/V relations). ``WithIntermediate``
adds ``aux`` to the output loss, so the training step stays ``loss_fn(model(x, m), y)``.

The teacher sees the student's token sequence: the student's vocabulary must be a subset of the
teacher's, piece by piece (a trimmed and/or pruned copy of it), and ``token_id_map`` gives the
teacher's id of each student id. The teacher is kept out of the module tree (a list), so DDP,
the optimizer and the checkpoint see only the student.

Example::

    student = LayerDistilledStudent(st_student, teacher_bert, id_map, hidden_weight=1.0, attention_weight=1.0)
    loss_fn = WithIntermediate(MSELoss(), student)
    loss = loss_fn(student(ids, mask), teacher_vectors)   # output MSE + the intermediate terms
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from mdistill.losses import AttentionRelationLoss, HiddenStateLoss
from mdistill.losses.AttentionRelationLoss import capture_qkv
from mdistill.losses.HiddenStateLoss import uniform_layer_map
from mdistill.models.split import FullStudent, mean_pool


def token_id_map(student_tokenizer, teacher_tokenizer) -> np.ndarray:
    """``map[student_id] = teacher_id`` of the same piece; every student piece must exist in the teacher."""
    teacher_vocab = teacher_tokenizer.get_vocab()
    student_vocab = student_tokenizer.get_vocab()
    missing = [p for p in student_vocab if p not in teacher_vocab]
    if missing:
        raise ValueError(
            f"{len(missing)} of the student's {len(student_vocab)} tokenizer pieces are not in the teacher's (e.g. {missing[:3]}): "
            "intermediate-layer losses need the teacher's tokenizer (a student built from the teacher: keep_layers / trim_vocab)"
        )
    out = np.zeros(max(student_vocab.values()) + 1, dtype=np.int64)
    for piece, i in student_vocab.items():
        out[i] = teacher_vocab[piece]
    return out


class LayerDistilledStudent(FullStudent):
    def __init__(
        self,
        st_model,
        teacher_bert: nn.Module,
        id_map: np.ndarray | torch.Tensor,
        *,
        hidden_weight: float,
        attention_weight: float,
        relation_heads: int = 12,
        layer_map: Mapping[int, int] | None = None,
        dense: nn.Linear | None = None,
    ):
        super().__init__(st_model, dense=dense)
        teacher_bert.eval().requires_grad_(False)
        self._teacher = [teacher_bert]  # not a submodule: frozen, never synced, optimised or saved
        self.register_buffer("id_map", torch.as_tensor(id_map, dtype=torch.long), persistent=False)
        n_s, n_t = self.config.num_hidden_layers, teacher_bert.config.num_hidden_layers
        self.layer_map = dict(layer_map) if layer_map is not None else uniform_layer_map(n_s, n_t)
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self.hidden_loss = HiddenStateLoss(self.layer_map, self.config.hidden_size, teacher_bert.config.hidden_size, project=None)
        self.attention_loss = AttentionRelationLoss(relation_heads)
        self.last_layers = (n_s - 1, n_t - 1)
        self.aux: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input_ids, mask)
        s_last, t_last = self.last_layers
        teacher = self._teacher[0].to(input_ids.device)
        with capture_qkv(self.bert, [s_last]) as s_qkv, capture_qkv(teacher, [t_last]) as t_qkv:
            out = self.bert(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            with torch.no_grad():
                t_out = teacher(input_ids=self.id_map[input_ids], attention_mask=mask, output_hidden_states=True)
        aux = out.last_hidden_state.new_zeros(())
        if self.hidden_weight > 0:
            aux = aux + self.hidden_weight * self.hidden_loss(out.hidden_states, t_out.hidden_states, mask)
        if self.attention_weight > 0:
            aux = aux + self.attention_weight * self.attention_loss(s_qkv[s_last], t_qkv[t_last], mask)
        self.aux = aux
        e = mean_pool(out.last_hidden_state, mask)
        if self.dense is not None:
            e = self.dense(e)
        return nn.functional.normalize(e, dim=-1)


class WithIntermediate(nn.Module):
    """The output loss plus the intermediate terms the student's last training forward stored."""

    def __init__(self, loss: nn.Module, student: LayerDistilledStudent):
        super().__init__()
        self.loss, self._student = loss, [student]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        student = self._student[0]
        aux, student.aux = student.aux, None  # each forward's terms are added once
        out = self.loss(pred, target)
        return out if aux is None else out + aux
