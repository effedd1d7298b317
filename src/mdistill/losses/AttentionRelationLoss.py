"""Multi-head self-attention relation distillation (MiniLMv2).

Wang et al., "MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing
Pretrained Transformers", Findings of ACL 2021, https://arxiv.org/abs/2012.15828. The queries,
keys and values of one student layer and one teacher layer are each split into the same number
A_r of *relation heads* (regardless of the models' own head counts and widths), and for each
X ∈ {Q, K, V}, per head a::

    R_X,a = softmax(X_a X_aᵀ / sqrt(d_r))                 d_r = d / A_r  (own width per model)
    L = 1/3 Σ_{X ∈ {Q,K,V}} mean_{a, valid i} KL(R^T_X,a[i] ‖ R^S_X,a[i])

The relations are [seq, seq] for both models, so a narrower student (smaller d) can learn a wider
teacher without a projection. Padded keys get zero probability (masked before the softmax);
padded query rows are left out of the mean.

Inputs: ``student`` and ``teacher``, each a (q, k, v) triple of [batch, seq, d] tensors (d may
differ between the two; each divisible by ``relation_heads``), as the attention's query/key/value
projections output them (``capture_qkv`` collects them from Hugging Face BERT-style models);
``attention_mask`` [batch, seq] (1 = token, 0 = padding), or None for all tokens.

Example::

    >>> import torch
    >>> loss = AttentionRelationLoss(relation_heads=2)
    >>> qkv = tuple(torch.randn(1, 3, 4) for _ in range(3))
    >>> loss(qkv, qkv).item()  # same relations: no loss
    0.0
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class AttentionRelationLoss(nn.Module):
    def __init__(self, relation_heads: int):
        super().__init__()
        if relation_heads < 1:
            raise ValueError("relation_heads must be >= 1")
        self.relation_heads = relation_heads

    def _log_relation(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, L, d] -> log R, [B, A_r, L, L]."""
        b, seq, d = x.shape
        if d % self.relation_heads:
            raise ValueError(f"width {d} is not divisible by relation_heads={self.relation_heads}")
        d_r = d // self.relation_heads
        xh = x.view(b, seq, self.relation_heads, d_r).transpose(1, 2)
        scores = xh @ xh.transpose(-1, -2) / d_r**0.5
        if key_mask is not None:
            # the dtype's lowest value acts as −inf (exp gives exactly 0) but keeps an all-padding
            # row finite, so it cannot put NaNs into the loss or the gradients
            scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        return nn.functional.log_softmax(scores, dim=-1)

    def forward(
        self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if len(student) != 3 or len(teacher) != 3:
            raise ValueError("student and teacher must each be a (q, k, v) triple")
        key_mask = None if attention_mask is None else attention_mask.bool()
        losses = []
        for s, t in zip(student, teacher):
            log_q = self._log_relation(s, key_mask)
            log_p = self._log_relation(t.to(s.dtype), key_mask)
            # KL per query row; masked keys contribute p · (…) = 0
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [B, A_r, L]
            if key_mask is None:
                losses.append(kl.mean())
            else:
                rows = key_mask[:, None, :].to(kl.dtype)  # the same mask, on the query axis
                losses.append((kl * rows).sum() / (rows.sum() * self.relation_heads).clamp_min(1))
        return torch.stack(losses).mean()


@contextmanager
def capture_qkv(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, QKV]]:
    """Capture the query/key/value projections of the given layers of a BERT-style model.

    Works with Hugging Face BertModel / XLMRobertaModel and their task heads (found through
    ``model.base_model``): forward hooks on ``encoder.layer[i].attention.self.{query,key,value}``
    record their outputs, [batch, seq, hidden]. ``layers`` index ``encoder.layer`` (0-based), so
    layer i's input is ``hidden_states[i]`` and its output ``hidden_states[i + 1]``. The dict is
    filled by each forward pass inside the block (the last pass wins); the hooks are removed on
    exit. The tensors keep their graph: run the teacher under ``torch.no_grad()``.

    Example::

        with capture_qkv(student, [5]) as s_qkv, capture_qkv(teacher, [11]) as t_qkv:
            student(**batch)
            with torch.no_grad():
                teacher(**batch)
        loss = AttentionRelationLoss(12)(s_qkv[5], t_qkv[11], batch["attention_mask"])
    """
    encoder_layers = getattr(model, "base_model", model).encoder.layer
    captured: dict[int, QKV] = {}
    handles = []

    def hook_for(layer: int, slot: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            # rebuild the triple so the dict always holds tuples, whatever order the hooks fire in
            parts = list(captured.get(layer, (None, None, None)))
            parts[slot] = output
            captured[layer] = tuple(parts)

        return hook

    try:
        for layer in layers:
            if not 0 <= layer < len(encoder_layers):
                raise IndexError(f"layer {layer} outside the model's {len(encoder_layers)} layers")
            attention = encoder_layers[layer].attention.self
            for slot, projection in enumerate((attention.query, attention.key, attention.value)):
                handles.append(projection.register_forward_hook(hook_for(layer, slot)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
