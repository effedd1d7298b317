"""Each loss against its formula on hand-computed tensors (and its docstring example)."""

import doctest
import importlib
import math

import pytest
import torch

from mdistill.losses import CosineLoss, DistillationLoss, KLDivLoss, MSELoss, TeacherContrastiveLoss


@pytest.mark.parametrize("name", ["MSELoss", "CosineLoss", "KLDivLoss", "DistillationLoss", "TeacherContrastiveLoss"])
def test_docstring_examples_hold(name):
    # the package re-exports the classes under the modules' names: fetch the modules themselves
    module = importlib.import_module(f"mdistill.losses.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_mse_on_both_sides_of_a_pair():
    # rows: student(en), student(de); both target teacher(en) = [1, 0]
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert MSELoss()(s, t).item() == pytest.approx((0 + 0 + 1 + 1) / 4)


def test_cosine_ignores_norm():
    s = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert CosineLoss()(s, t).item() == pytest.approx(((1 - 1) + (1 - 1 / math.sqrt(2))) / 2)


def test_teacher_contrastive_by_hand_siblings_are_not_negatives():
    # rows: student(en), student(de) of source A; student(en) of source B. Targets: A, A, B.
    a, b = [1.0, 0.0], [0.6, 0.8]
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    t = torch.tensor([a, a, b])
    tau = 0.5

    def ce(cos_pos, cos_neg):  # two candidates: the row's source and the other one
        return -math.log(math.exp(cos_pos / tau) / (math.exp(cos_pos / tau) + math.exp(cos_neg / tau)))

    by_hand = (ce(1.0, 0.6) + ce(0.0, 0.8) + ce(1.0, 0.6)) / 3  # cos(s_i, A), cos(s_i, B)
    assert TeacherContrastiveLoss(base=None, temperature=tau)(s, t).item() == pytest.approx(by_hand, rel=1e-5)
    mse = ((0 + 0) + (1 + 1) + (0 + 0)) / 6
    with_base = TeacherContrastiveLoss(base=MSELoss(), weight=0.5, temperature=tau)(s, t).item()
    assert with_base == pytest.approx(mse + 0.5 * by_hand, rel=1e-5)


def _kl_by_hand(s, t, temp):
    p = [math.exp(x / temp) for x in t]
    q = [math.exp(x / temp) for x in s]
    p = [x / sum(p) for x in p]
    q = [x / sum(q) for x in q]
    return temp * temp * sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kl_matches_formula_including_t_squared(temp):
    s, t = [1.0, 0.0, -1.0], [0.5, 2.0, 0.0]
    got = KLDivLoss(temp)(torch.tensor([s]), torch.tensor([t])).item()
    assert got == pytest.approx(_kl_by_hand(s, t, temp), rel=1e-5)
    # batchmean: a batch of two identical rows gives the same value
    assert KLDivLoss(temp)(torch.tensor([s, s]), torch.tensor([t, t])).item() == pytest.approx(got, rel=1e-5)


def test_blend_is_alpha_kl_plus_one_minus_alpha_ce():
    s, t, y = [1.0, 0.0, -1.0], [0.5, 2.0, 0.0], 2
    ce = -math.log(math.exp(s[y]) / sum(math.exp(x) for x in s))
    for alpha in (0.0, 0.3, 1.0):
        got = DistillationLoss(alpha=alpha, temperature=2.0)(torch.tensor([s]), torch.tensor([t]), torch.tensor([y])).item()
        assert got == pytest.approx(alpha * _kl_by_hand(s, t, 2.0) + (1 - alpha) * ce, rel=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        KLDivLoss(0)
    with pytest.raises(ValueError):
        DistillationLoss(alpha=1.5)


def test_train_loss_names_build_their_losses():
    from mdistill.losses import embedding_loss

    both = embedding_loss("mse+contrastive", contrastive_weight=0.3, contrastive_temperature=0.1)
    assert isinstance(both, TeacherContrastiveLoss) and isinstance(both.base, MSELoss) and (both.weight, both.temperature) == (0.3, 0.1)
    assert isinstance(embedding_loss("mse"), MSELoss) and isinstance(embedding_loss("cosine"), CosineLoss)
    with pytest.raises(ValueError, match="unknown embedding loss 'kl'"):
        embedding_loss("kl")
