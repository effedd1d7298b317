"""Intermediate-layer losses (TinyBERT hidden states, MiniLMv2 attention relations) against
values computed here with plain numpy loops, plus masking, projection and the Q/K/V hooks."""

import doctest
import importlib
import math

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from mdistill.losses import AttentionRelationLoss, HiddenStateLoss, capture_qkv, uniform_layer_map

MASK = [[1, 1, 1], [1, 1, 0]]  # second sequence: last token is padding


@pytest.mark.parametrize("name", ["HiddenStateLoss", "AttentionRelationLoss"])
def test_docstring_examples_hold(name):
    module = importlib.import_module(f"mdistill.losses.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def _randn(*shape: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _t(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=torch.float32)


# ---- uniform_layer_map ----------------------------------------------------------------------


def test_uniform_layer_map_values():
    assert uniform_layer_map(4, 12) == {1: 3, 2: 6, 3: 9, 4: 12}
    assert uniform_layer_map(6, 12) == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 12}
    assert uniform_layer_map(3, 12, include_embeddings=True) == {0: 0, 1: 4, 2: 8, 3: 12}
    # halves round up: 2.5 -> 3, 7.5 -> 8 (Python's round would give 2 and 8)
    assert uniform_layer_map(4, 10) == {1: 3, 2: 5, 3: 8, 4: 10}
    assert uniform_layer_map(2, 2) == {1: 1, 2: 2}
    with pytest.raises(ValueError):
        uniform_layer_map(0, 12)


# ---- HiddenStateLoss ------------------------------------------------------------------------


def _assert_padding_changes_nothing(loss, s, t, *, garbage: float, fill: float, rel: float) -> None:
    """Under ``MASK``, the loss ignores what the padded position holds (``garbage`` there, +garbage
    in the student, -garbage in the teacher) and one more padded position on every sequence."""
    mask = torch.tensor(MASK)
    base = loss(s, t, mask).item()
    s2, t2 = [x.clone() for x in s], [x.clone() for x in t]
    for x in s2:
        x[1, 2] = garbage
    for x in t2:
        x[1, 2] = -garbage
    assert loss(s2, t2, mask).item() == pytest.approx(base, rel=rel)
    pad_s = [torch.cat([x, torch.full((x.shape[0], 1, x.shape[2]), fill)], dim=1) for x in s]
    pad_t = [torch.cat([x, torch.full((x.shape[0], 1, x.shape[2]), -fill)], dim=1) for x in t]
    mask_pad = torch.cat([mask, torch.zeros(2, 1, dtype=mask.dtype)], dim=1)
    assert loss(pad_s, pad_t, mask_pad).item() == pytest.approx(base, rel=rel)


def _hidden_mse_by_hand(s_layers, t_layers, layer_map, mask, w=None, b=None):
    per_pair = []
    for i, j in layer_map.items():
        total, count = 0.0, 0
        for bi in range(len(mask)):
            for pos in range(len(mask[bi])):
                if not mask[bi][pos]:
                    continue
                h = s_layers[i][bi][pos]
                if w is not None:
                    h = [sum(w[o][k] * h[k] for k in range(len(h))) + b[o] for o in range(len(w))]
                tgt = t_layers[j][bi][pos]
                total += sum((float(x) - float(y)) ** 2 for x, y in zip(h, tgt))
                count += len(tgt)
        per_pair.append(total / count)
    return sum(per_pair) / len(per_pair)


def test_hidden_state_loss_by_hand():
    # student: embeddings + 2 layers, teacher: embeddings + 4 layers, same width 2
    s = [_randn(2, 3, 2, seed=k) for k in range(3)]
    t = [_randn(2, 3, 2, seed=10 + k) for k in range(5)]
    layer_map = {0: 0, 1: 2, 2: 4}
    loss = HiddenStateLoss(layer_map, student_dim=2)
    assert loss.projection is None
    got = loss([_t(x) for x in s], [_t(x) for x in t], torch.tensor(MASK)).item()
    assert got == pytest.approx(_hidden_mse_by_hand(s, t, layer_map, MASK), rel=1e-5)
    # no mask: every token counts
    got_all = loss([_t(x) for x in s], [_t(x) for x in t]).item()
    assert got_all == pytest.approx(_hidden_mse_by_hand(s, t, layer_map, [[1, 1, 1]] * 2), rel=1e-5)


def test_hidden_state_loss_tiny_explicit_values():
    # one pair, one sequence [tok, pad]: only the token's errors (1 and 2) count: (1 + 4) / 2
    s = [torch.tensor([[[0.0, 0.0], [9.0, 9.0]]])]
    t = [torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])]
    got = HiddenStateLoss({0: 0}, 2)(s, t, torch.tensor([[1, 0]])).item()
    assert got == pytest.approx(2.5)


def test_hidden_state_padding_changes_nothing():
    s = [_t(_randn(2, 3, 2, seed=k)) for k in range(2)]
    t = [_t(_randn(2, 3, 2, seed=10 + k)) for k in range(2)]
    _assert_padding_changes_nothing(HiddenStateLoss({1: 1}, 2), s, t, garbage=100.0, fill=7.0, rel=1e-6)


def test_hidden_state_identical_is_zero():
    h = [_t(_randn(2, 3, 4, seed=k)) for k in range(3)]
    assert HiddenStateLoss(uniform_layer_map(2, 2, include_embeddings=True), 4)(h, h, torch.tensor(MASK)).item() == 0.0


def test_hidden_state_projection_path():
    torch.manual_seed(0)
    s = [_randn(2, 3, 2, seed=k) for k in range(2)]
    t = [_randn(2, 3, 3, seed=10 + k) for k in range(3)]
    loss = HiddenStateLoss({1: 2}, student_dim=2, teacher_dim=3)
    assert isinstance(loss.projection, torch.nn.Linear)
    assert (loss.projection.in_features, loss.projection.out_features) == (2, 3)
    st = [_t(x).requires_grad_() for x in s]
    out = loss(st, [_t(x) for x in t], torch.tensor(MASK))
    w = loss.projection.weight.detach().numpy().tolist()
    b = loss.projection.bias.detach().numpy().tolist()
    assert out.item() == pytest.approx(_hidden_mse_by_hand(s, t, {1: 2}, MASK, w, b), rel=1e-5)
    out.backward()
    assert loss.projection.weight.grad is not None and loss.projection.weight.grad.abs().sum() > 0
    assert loss.projection.bias.grad is not None
    assert st[1].grad.abs().sum() > 0
    assert st[1].grad[1, 2].abs().sum() == 0  # the padded token gets no gradient
    # forced projection at equal widths; refused projection at different widths
    assert isinstance(HiddenStateLoss({1: 1}, 4, 4, project=True).projection, torch.nn.Linear)
    with pytest.raises(ValueError):
        HiddenStateLoss({1: 1}, 2, 3, project=False)


def test_hidden_state_bad_map():
    with pytest.raises(ValueError):
        HiddenStateLoss({}, 2)
    with pytest.raises(IndexError):
        h = [torch.zeros(1, 2, 2)] * 2
        HiddenStateLoss({1: 5}, 2)(h, h)


# ---- AttentionRelationLoss ------------------------------------------------------------------


def _relation_kl_by_hand(s_qkv, t_qkv, heads, mask):
    """Loops: per X in (q, k, v), per sequence, head, valid query row: KL over valid keys."""

    def rel_row(x, b, h, i, valid):
        d_r = x.shape[-1] // heads
        xi = x[b, i, h * d_r : (h + 1) * d_r]
        scores = [float(np.dot(xi, x[b, j, h * d_r : (h + 1) * d_r])) / math.sqrt(d_r) for j in valid]
        m = max(scores)
        e = [math.exp(v - m) for v in scores]
        return [v / sum(e) for v in e]

    per_x = []
    for xs, xt in zip(s_qkv, t_qkv):
        total, rows = 0.0, 0
        for b in range(len(mask)):
            valid = [j for j, on in enumerate(mask[b]) if on]
            for h in range(heads):
                for i in valid:
                    p = rel_row(xt, b, h, i, valid)
                    q = rel_row(xs, b, h, i, valid)
                    total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
                    rows += 1
        per_x.append(total / rows)
    return sum(per_x) / 3


def test_attention_relation_by_hand_different_widths():
    # student width 4, teacher width 6, 2 relation heads: d_r = 2 and 3
    s = [_randn(2, 3, 4, seed=k) for k in range(3)]
    t = [_randn(2, 3, 6, seed=10 + k) for k in range(3)]
    loss = AttentionRelationLoss(relation_heads=2)
    got = loss([_t(x) for x in s], [_t(x) for x in t], torch.tensor(MASK)).item()
    assert got == pytest.approx(_relation_kl_by_hand(s, t, 2, MASK), rel=1e-5)
    got_all = loss([_t(x) for x in s], [_t(x) for x in t]).item()
    assert got_all == pytest.approx(_relation_kl_by_hand(s, t, 2, [[1, 1, 1]] * 2), rel=1e-5)
    assert got > 0


def test_attention_relation_one_head_explicit():
    # one head, d = 1, L = 2, no mask. Student x = [0, 0] -> uniform rows [.5, .5].
    # Teacher x = [1, 0]: row 0 scores [1, 0] -> p = softmax([1, 0]); row 1 scores [0, 0] -> uniform.
    s = torch.zeros(1, 2, 1)
    t = torch.tensor([[[1.0], [0.0]]])
    p0 = [math.e / (math.e + 1), 1 / (math.e + 1)]
    kl_row0 = sum(p * math.log(p / 0.5) for p in p0)
    expected = (kl_row0 + 0.0) / 2  # mean over the two query rows; same for Q, K and V
    got = AttentionRelationLoss(1)((s, s, s), (t, t, t)).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_attention_relation_padding_changes_nothing():
    s = [_t(_randn(2, 3, 4, seed=k)) for k in range(3)]
    t = [_t(_randn(2, 3, 6, seed=10 + k)) for k in range(3)]
    # large values at the padded position would dominate any unmasked softmax
    _assert_padding_changes_nothing(AttentionRelationLoss(2), s, t, garbage=50.0, fill=3.0, rel=1e-5)


def test_attention_relation_identical_is_zero_and_gradients_are_finite():
    qkv = [_t(_randn(2, 3, 8, seed=k)) for k in range(3)]
    assert AttentionRelationLoss(4)(qkv, qkv, torch.tensor(MASK)).item() == 0.0
    # a sequence that is all padding neither counts nor puts NaNs in the gradient
    s = [_t(_randn(2, 3, 4, seed=k)).requires_grad_() for k in range(3)]
    out = AttentionRelationLoss(2)(s, qkv, torch.tensor([[1, 1, 0], [0, 0, 0]]))
    out.backward()
    assert torch.isfinite(out) and all(torch.isfinite(x.grad).all() for x in s)
    assert all(x.grad[1].abs().sum() == 0 for x in s)


def test_attention_relation_bad_inputs():
    with pytest.raises(ValueError):
        AttentionRelationLoss(0)
    x = torch.zeros(1, 2, 5)
    with pytest.raises(ValueError):
        AttentionRelationLoss(2)((x, x, x), (x, x, x))
    with pytest.raises(ValueError):
        AttentionRelationLoss(1)((x, x), (x, x, x))


# ---- capture_qkv ----------------------------------------------------------------------------


def _tiny_bert(hidden: int = 32, layers: int = 2, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64, max_position_embeddings=16
    )
    return BertModel(config).eval()


def test_capture_qkv_on_tiny_bert():
    model = _tiny_bert()
    ids = torch.tensor([[2, 5, 7, 9], [2, 4, 6, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad(), capture_qkv(model, [0, 1]) as qkv:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert sorted(qkv) == [0, 1]
    for layer in (0, 1):
        attention = model.encoder.layer[layer].attention.self
        with torch.no_grad():
            expected = [proj(out.hidden_states[layer]) for proj in (attention.query, attention.key, attention.value)]
        assert len(qkv[layer]) == 3
        for got, want in zip(qkv[layer], expected):
            assert got.shape == (2, 4, 32)
            torch.testing.assert_close(got, want)
    # our hooks are gone after the block (transformers adds hooks of its own elsewhere)
    projections = [
        p for layer in model.encoder.layer for p in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value)
    ]
    assert all(not p._forward_hooks for p in projections)
    with pytest.raises(IndexError), capture_qkv(model, [0, 2]):
        pass
    assert all(not p._forward_hooks for p in projections)


def test_capture_feeds_relation_loss_across_widths():
    student, teacher = _tiny_bert(hidden=16, layers=1, seed=1), _tiny_bert(hidden=32, layers=2, seed=2)
    student.train(False)
    ids = torch.tensor([[2, 5, 7, 9], [2, 4, 6, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with capture_qkv(student, [0]) as s_qkv, capture_qkv(teacher, [1]) as t_qkv:
        student(input_ids=ids, attention_mask=mask)
        with torch.no_grad():
            teacher(input_ids=ids, attention_mask=mask)
    loss = AttentionRelationLoss(relation_heads=4)(s_qkv[0], t_qkv[1], mask)
    loss.backward()
    assert loss.item() > 0
    assert student.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
