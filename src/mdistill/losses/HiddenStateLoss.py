"""Hidden-state distillation through a layer map (TinyBERT).

Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP
2020, https://arxiv.org/abs/1909.10351. Student layer m learns teacher layer g(m)::

    L_hidn = mean over mapped pairs (m, g(m)) of MSE(H^S_m W_h + b, H^T_g(m))

W_h ∈ R^{d_s × d_t} is one learnable projection shared by all pairs (as in TinyBERT), needed when
the student is narrower than the teacher. The MSE is taken over non-padding tokens only: padded
positions hold whatever the model wrote there and would otherwise dilute (or drive) the loss.

Inputs: ``student_hidden`` and ``teacher_hidden``, sequences of [batch, seq, d_s] and
[batch, seq, d_t] tensors as Hugging Face models return them with ``output_hidden_states=True``
(index 0 = embedding output, index k = output of layer k); ``attention_mask`` [batch, seq] (1 =
token, 0 = padding), or None for all tokens. ``layer_map`` uses that same indexing:
{student index: teacher index}; ``uniform_layer_map`` builds TinyBERT's g(m) = m · n_t / n_s.

Example::

    >>> import torch
    >>> loss = HiddenStateLoss({1: 2}, student_dim=4)
    >>> s = [torch.zeros(1, 2, 4)] * 2
    >>> t = [torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.ones(1, 2, 4)]
    >>> loss(s, t).item()
    1.0
    >>> uniform_layer_map(4, 12)
    {1: 3, 2: 6, 3: 9, 4: 12}
    >>> uniform_layer_map(3, 12, include_embeddings=True)
    {0: 0, 1: 4, 2: 8, 3: 12}
"""

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def uniform_layer_map(student_layers: int, teacher_layers: int, include_embeddings: bool = False) -> dict[int, int]:
    """Student layer k (1..n_s) -> teacher layer round(k · n_t / n_s), in hidden_states indexing.

    The last student layer always maps to the last teacher layer. Halves always round up, so
    4 -> 10 layers gives 3, 5, 8, 10 (Python's round-half-to-even would give 2, 5, 8, 10: 2.5 and
    7.5 rounded in opposite directions). ``include_embeddings`` adds 0 -> 0 (embedding output to
    embedding output), which TinyBERT also distils.
    """
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError("student_layers and teacher_layers must be >= 1")
    # integer form of floor(k * n_t / n_s + 1/2): exact, no float rounding at the halves
    layer_map = {k: (2 * k * teacher_layers + student_layers) // (2 * student_layers) for k in range(1, student_layers + 1)}
    return {0: 0, **layer_map} if include_embeddings else layer_map


class HiddenStateLoss(nn.Module):
    def __init__(self, layer_map: Mapping[int, int], student_dim: int, teacher_dim: int | None = None, project: bool | None = None):
        """``project``: None = a projection only when the widths differ; True = always (a learnable
        d_s -> d_t map even for equal widths); False = never (the widths must then be equal)."""
        super().__init__()
        teacher_dim = student_dim if teacher_dim is None else teacher_dim
        if not layer_map:
            raise ValueError("layer_map is empty")
        if any(i < 0 or j < 0 for i, j in layer_map.items()):
            raise ValueError("layer_map indices must be >= 0 (hidden_states indexing: 0 = embeddings)")
        if project is None:
            project = student_dim != teacher_dim
        if not project and student_dim != teacher_dim:
            raise ValueError(f"student_dim {student_dim} != teacher_dim {teacher_dim} needs a projection")
        self.layer_map = dict(layer_map)
        self.projection: nn.Linear | None = nn.Linear(student_dim, teacher_dim) if project else None

    def forward(
        self,
        student_hidden: Sequence[torch.Tensor],
        teacher_hidden: Sequence[torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        losses = []
        for i, j in self.layer_map.items():
            if i >= len(student_hidden) or j >= len(teacher_hidden):
                raise IndexError(f"layer pair {i} -> {j} outside {len(student_hidden)} student / {len(teacher_hidden)} teacher states")
            s, t = student_hidden[i], teacher_hidden[j]
            if self.projection is not None:
                s = self.projection(s)
            t = t.to(s.dtype)
            if attention_mask is None:
                losses.append(nn.functional.mse_loss(s, t))
                continue
            mask = attention_mask.to(s.dtype).unsqueeze(-1)  # [B, L, 1]
            # sum of squared errors over real tokens / (tokens · width): the MSE of the real tokens alone
            sq = ((s - t) ** 2 * mask).sum()
            losses.append(sq / (mask.sum() * s.shape[-1]).clamp_min(1))
        return torch.stack(losses).mean()
