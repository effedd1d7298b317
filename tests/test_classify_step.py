"""The classifier-student kernels (``training/classify_step.py``): the soft / hard / online losses
through ``classify_train_step`` against the formulas written out in numpy, on a tiny random-init
BERT and real LibreOffice help paragraphs labelled by ``tasks.help_topics``; the export round trip."""

from __future__ import annotations

import copy
import random

import numpy as np
import pyarrow as pa
import pytest
import torch

from mdistill.losses import DistillationLoss, KLDivLoss
from mdistill.tasks import help_topics
from mdistill.training.classify_step import (
    IGNORE,
    ClassifierStudent,
    ClassifyBatch,
    classification_loss,
    classify_batches,
    classify_train_step,
    make_batch,
    make_classifier_optimizer,
    predict_logits,
    predict_state_logits,
)
from mdistill.training.step import StateFeatures, TextFeatures

from conftest import fixture_pairs, make_tiny_model

LABELS = help_topics.labels()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random-init BERT (2 layers, hidden 32) as a sentence-transformers directory, its
    tokenizer, and German help paragraphs with their help-topic label (None: ``shared``)."""
    from transformers import AutoTokenizer

    pairs = fixture_pairs()
    path = make_tiny_model(tmp_path_factory.mktemp("clf") / "st", list(pairs.en) + list(pairs.text), layers=2, hidden=32)
    de = pairs[pairs.lang == "de"]
    labels = [help_topics.label_of(s.split(":", 1)[1]) for s in de.source]
    return {
        "path": path,
        "tokenizer": AutoTokenizer.from_pretrained(str(path)),
        "texts": list(de.text),
        "en": list(de.en),
        "label_ids": [None if x is None else help_topics.label_id(x) for x in labels],
    }


def _student(tiny, seed: int = 0) -> ClassifierStudent:
    torch.manual_seed(seed)
    model = ClassifierStudent.from_pretrained(tiny["path"], LABELS, dropout=0.0)
    model.set_dropout(0.0)  # deterministic: the logits before the step are the ones the step's loss saw
    with torch.no_grad():  # logits of order 1 (the default head init gives ~0.01: every loss would look alike)
        model.model.classifier.weight.normal_(0, 1.0)
    return model.train()


def _opt(model):
    return make_classifier_optimizer(model, lr=1e-3, head_lr=1e-2, weight_decay=0.0, total_steps=10, warmup_ratio=0.0)


def _batch(tiny, rows: list[int], teacher_logits=None):
    texts, labels = [tiny["texts"][i] for i in rows], [tiny["label_ids"][i] for i in rows]
    return make_batch(texts, tiny["tokenizer"], labels=labels, teacher_logits=teacher_logits, max_seq_length=64)


def _mixed_rows(tiny, n: int = 12) -> list[int]:
    """``n`` rows, a third of them unlabelled (``shared`` help), the rest of several labels."""
    ids = tiny["label_ids"]
    unlabelled = [i for i, v in enumerate(ids) if v is None][: n // 3]
    labelled, seen = [], set()
    for i, v in enumerate(ids):  # one of each label first, then any
        if v is not None and v not in seen:
            labelled.append(i)
            seen.add(v)
    labelled += [i for i, v in enumerate(ids) if v is not None and i not in labelled]
    return sorted(unlabelled + labelled[: n - len(unlabelled)])


# -- the formulas, written out ------------------------------------------------------------------------


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl_rows(s: np.ndarray, t: np.ndarray, temp: float) -> np.ndarray:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)) per row."""
    log_p, log_q = _log_softmax(t / temp), _log_softmax(s / temp)
    return temp * temp * (np.exp(log_p) * (log_p - log_q)).sum(-1)


def _ce_rows(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -_log_softmax(s)[np.arange(len(y)), np.where(y == IGNORE, 0, y)]


def _soft_by_hand(s, t, y, temp, alpha) -> float:
    """Labelled row: α·KL + (1−α)·CE; unlabelled row: KL alone; mean over rows."""
    s, t, y = np.asarray(s, np.float64), np.asarray(t, np.float64), np.asarray(y)
    kl, ce = _kl_rows(s, t, temp), _ce_rows(s, y)
    return float(np.where(y != IGNORE, alpha * kl + (1 - alpha) * ce, kl).mean())


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _all_changed(before, model) -> bool:
    return all(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()) if b.requires_grad)


# -- losses on hand-written tensors -------------------------------------------------------------------


S = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.4, 2.0], [-0.5, 1.5, 0.0], [0.0, 0.0, 3.0]])
T = torch.tensor([[0.5, 2.0, 0.0], [1.0, -1.0, 0.5], [2.0, 0.0, 0.0], [0.3, 0.3, 0.3]])


def test_soft_rule_on_labelled_unlabelled_and_mixed_rows():
    y_all, y_none, y_mix = torch.tensor([2, 0, 1, 2]), torch.full((4,), IGNORE), torch.tensor([2, IGNORE, 1, IGNORE])
    for alpha in (0.0, 0.3, 1.0):

        def got(y, alpha=alpha):
            return classification_loss(S, T, y, "soft", 2.0, alpha).student.item()

        # every row labelled: exactly DistillationLoss; none: exactly KLDivLoss, whatever α
        assert got(y_all) == pytest.approx(DistillationLoss(alpha, 2.0)(S, T, y_all).item(), rel=1e-6)
        assert got(y_none) == pytest.approx(KLDivLoss(2.0)(S, T).item(), rel=1e-6)
        assert got(y_mix) == pytest.approx(_soft_by_hand(S, T, y_mix, 2.0, alpha), rel=1e-5)
    # α = 0: the labelled rows are plain CE, the unlabelled ones still distil (weight 1)
    kl, ce = _kl_rows(S.numpy(), T.numpy(), 2.0), _ce_rows(S.numpy(), y_mix.numpy())
    by_hand = (ce[0] + kl[1] + ce[2] + kl[3]) / 4
    assert classification_loss(S, T, y_mix, "soft", 2.0, 0.0).student.item() == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_t_squared_scaling(temp):
    y = torch.full((4,), IGNORE)
    got = classification_loss(S, T, y, "soft", temp, 1.0).student.item()
    log_p, log_q = _log_softmax(T.numpy() / temp), _log_softmax(S.numpy() / temp)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()
    assert got == pytest.approx(temp**2 * kl, rel=1e-5)


def test_t_squared_keeps_the_gradient_scale_at_high_temperature():
    # Hinton et al.: d(T²·KL)/dz_s = T (q_T − p_T) → (z_s − z_t)/K for large T (zero-mean logits)
    s, t = S - S.mean(1, keepdim=True), T - T.mean(1, keepdim=True)
    norms = []
    for temp in (10.0, 20.0, 40.0):
        z = s.clone().requires_grad_(True)
        classification_loss(z, t, torch.full((4,), IGNORE), "soft", temp, 1.0).student.backward()
        norms.append(z.grad.norm().item())
    limit = ((s - t) / 3 / 4).norm().item()  # / K classes / batch rows (batchmean)
    assert norms == pytest.approx([limit] * 3, rel=0.05)


def test_hard_is_ce_to_the_teacher_argmax_and_ignores_gold_labels():
    got = classification_loss(S, T, torch.tensor([0, 0, 0, 0]), "hard", 5.0, 0.7).student.item()
    assert got == pytest.approx(_ce_rows(S.numpy(), T.numpy().argmax(1)).mean(), rel=1e-5)


def test_bad_modes_and_missing_teachers_are_refused(tiny):
    with pytest.raises(ValueError, match="mode"):
        classification_loss(S, T, torch.zeros(4, dtype=torch.long), "mse", 1.0, 0.5)
    model = _student(tiny)
    opt, sched = _opt(model)
    with pytest.raises(ValueError, match="teacher_optimizer"):
        classify_train_step(model, opt, sched, _batch(tiny, [0, 1, 2, 3]), "online", 1.0, 0.5, teacher=model)
    with pytest.raises(ValueError, match="teacher_logits"):
        classify_train_step(model, opt, sched, _batch(tiny, [0, 1, 2, 3]), "soft", 1.0, 0.5)


# -- through the step, on a real (tiny) BERT ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_step_returns_the_loss_of_the_models_logits(tiny, mode):
    model = _student(tiny)
    opt, sched = _opt(model)
    rows = _mixed_rows(tiny)
    y = np.array([IGNORE if tiny["label_ids"][i] is None else tiny["label_ids"][i] for i in rows])
    assert (y == IGNORE).any() and (y != IGNORE).any()  # the fixture mixes labelled and `shared` rows
    teacher = np.random.default_rng(0).normal(0, 2, size=(12, len(LABELS))).astype(np.float32)
    batch = _batch(tiny, rows, teacher)
    with torch.no_grad():
        s = model(batch.features()).numpy().astype(np.float64)
    before = _params(model)
    out = classify_train_step(model, opt, sched, batch, mode, 2.0, 0.3)
    want = _soft_by_hand(s, teacher, y, 2.0, 0.3) if mode == "soft" else float(_ce_rows(s, teacher.argmax(1)).mean())
    assert set(out) == {"loss"}
    assert out["loss"] == pytest.approx(want, rel=1e-5)
    assert _all_changed(before, model)


def test_supervised_is_ce_to_the_gold_labels_of_the_labelled_rows(tiny):
    model = _student(tiny)
    opt, sched = _opt(model)
    rows = _mixed_rows(tiny)
    y = np.array([IGNORE if tiny["label_ids"][i] is None else tiny["label_ids"][i] for i in rows])
    batch = _batch(tiny, rows)  # no teacher: the gold labels are the target
    with torch.no_grad():
        s = model(batch.features()).numpy().astype(np.float64)
    out = classify_train_step(model, opt, sched, batch, "supervised", 2.0, 0.3)
    assert out["loss"] == pytest.approx(float(_ce_rows(s[y != IGNORE], y[y != IGNORE]).mean()), rel=1e-5)
    unlabelled = [i for i in rows if tiny["label_ids"][i] is None]
    with pytest.raises(ValueError, match="without any gold label"):
        classify_train_step(model, opt, sched, _batch(tiny, unlabelled), "supervised", 2.0, 0.3)


def test_freeze_below_trains_only_the_top_layers_pooler_and_head(tiny):
    model = _student(tiny)
    n_layers = len(model.model.bert.encoder.layer)
    trainable = model.freeze_below(1)
    names = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith((f"bert.encoder.layer.{n_layers - 1}.", "bert.pooler.", "classifier.")) for n in names)
    assert trainable == sum(p.numel() for p in model.model.parameters() if p.requires_grad)
    opt, sched = _opt(model)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.model.parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.model.named_parameters() if not p.requires_grad}
    teacher = np.random.default_rng(0).normal(0, 2, size=(12, len(LABELS))).astype(np.float32)
    classify_train_step(model, opt, sched, _batch(tiny, _mixed_rows(tiny), teacher), "soft", 2.0, 0.5)
    assert all(torch.equal(frozen[n], p) for n, p in model.model.named_parameters() if n in frozen)
    assert model.freeze_below("all") == sum(p.numel() for p in model.model.parameters())
    with pytest.raises(ValueError, match="layers"):
        model.freeze_below(n_layers + 1)


def test_online_trains_both_models(tiny):
    from transformers import AutoModelForSequenceClassification

    student = _student(tiny, seed=0)
    torch.manual_seed(1)  # the teacher: a plain HF classifier (what encode.load_classifier gives), its own head
    teacher = AutoModelForSequenceClassification.from_pretrained(
        str(tiny["path"]), num_labels=len(LABELS), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    ).train()
    with torch.no_grad():
        teacher.classifier.weight.normal_(0, 1.0)
    opt, sched = _opt(student)
    t_opt, t_sched = _opt(teacher)
    batch = _batch(tiny, _mixed_rows(tiny))  # no cached logits: the teacher runs live
    y = batch.labels.numpy()
    with torch.no_grad():
        s, t = student(batch.features()).double().numpy(), teacher(**batch.features()).logits.double().numpy()
    s_before, t_before = _params(student), _params(teacher)
    out = classify_train_step(student, opt, sched, batch, "online", 1.0, 0.5, teacher, t_opt, teacher_scheduler=t_sched)
    assert out["loss"] == pytest.approx(_soft_by_hand(s, t, y, 1.0, 0.5), rel=1e-5)
    assert out["teacher_loss"] == pytest.approx(_soft_by_hand(t, s, y, 1.0, 0.5), rel=1e-5)
    assert _all_changed(s_before, student) and _all_changed(t_before, teacher)
    assert t_sched.last_epoch == 1


def test_classify_batches_cover_every_row_once(tiny):
    n = 40
    logits = np.arange(n * len(LABELS), dtype=np.float32).reshape(n, len(LABELS))
    chunk = pa.table(
        {
            "text": tiny["texts"][:n],
            "en": tiny["en"][:n],
            "label_id": pa.array(tiny["label_ids"][:n], pa.int64()),
            "logits": pa.array(list(logits), pa.list_(pa.float32(), len(LABELS))),
        }
    )
    feats = TextFeatures(tiny["tokenizer"], "", 64)
    seen = []
    for b in classify_batches([chunk], 16, random.Random(0), feats):
        rows = b.teacher_logits[:, 0].long() // len(LABELS)  # the row each teacher-logit row came from
        want_y = [IGNORE if tiny["label_ids"][i] is None else tiny["label_ids"][i] for i in rows.tolist()]
        assert b.labels.tolist() == want_y and b.teacher_index is None
        assert b.inputs.shape[0] == len(rows)
        seen += rows.tolist()
    assert sorted(seen) == list(range(n))


def test_a_live_teacher_runs_once_per_english_source_in_a_batch(tiny):
    """Online batches group a source with its translations: the teacher's input holds each distinct
    English once, ``teacher_index`` gives every row its own source, and the online step's losses
    are those of the same batch with one teacher input per row."""
    from transformers import AutoModelForSequenceClassification

    n = 24
    rows = {"text": tiny["en"][:n] * 2, "en": tiny["en"][:n] * 2}  # two rows per source; a row's text is its source: checkable
    rows["label_id"] = pa.array(tiny["label_ids"][:n] * 2, pa.int64())
    chunk = pa.table(rows)
    feats = TextFeatures(tiny["tokenizer"], "", 64)
    source_ids = {tuple(x.tolist()) for x in feats(pa.table({"text": tiny["en"][:n]}))}
    seen, shared, rows_seen = [], 0, 0
    for b in classify_batches([chunk], 8, random.Random(0), feats, logits_column=None, teacher_features=feats):
        distinct = b.teacher_input_ids.shape[0]
        shared += len(b.labels) - distinct
        rows_seen += len(b.labels)
        assert b.teacher_index.shape == b.labels.shape and sorted(set(b.teacher_index.tolist())) == list(range(distinct))
        for k in range(distinct):  # each teacher input is an English source, once
            assert tuple(b.teacher_input_ids[k][b.teacher_attention_mask[k] == 1].tolist()) in source_ids
        for r, k in enumerate(b.teacher_index.tolist()):  # and every row points to its own source
            assert torch.equal(b.inputs[r][b.attention_mask[r] == 1], b.teacher_input_ids[k][b.teacher_attention_mask[k] == 1])
        seen.append(b)
    assert rows_seen == 2 * n and shared >= n // 2  # every row once; most sources share a batch with their second row

    torch.manual_seed(1)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        str(tiny["path"]), num_labels=len(LABELS), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    ).train()
    b = seen[0]
    ids, mask = b.teacher_input_ids[b.teacher_index], b.teacher_attention_mask[b.teacher_index]
    once = ClassifyBatch(b.inputs, b.attention_mask, b.labels, None, ids, mask)  # one teacher input per row
    losses = []
    for batch in (b, once):
        s, t = _student(tiny, seed=0), copy.deepcopy(teacher)
        opt, sched = _opt(s)
        t_opt, t_sched = _opt(t)
        losses.append(classify_train_step(s, opt, sched, batch, "online", 2.0, 0.5, t, t_opt, teacher_scheduler=t_sched))
    assert losses[0]["loss"] == pytest.approx(losses[1]["loss"], rel=1e-5)
    assert losses[0]["teacher_loss"] == pytest.approx(losses[1]["teacher_loss"], rel=1e-5)


def test_export_round_trip_with_auto_model_and_pipeline(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    model = _student(tiny)
    opt, sched = _opt(model)
    for start in (0, 12):  # trained a little: the head is not its init
        rows = list(range(start, start + 12))
        classify_train_step(model, opt, sched, _batch(tiny, rows, np.zeros((12, len(LABELS)), np.float32)), "soft", 2.0, 0.5)
    out = model.save(tmp_path / "clf", tiny["tokenizer"])

    loaded = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert loaded.config.id2label == dict(enumerate(LABELS)) and loaded.config.label2id == {x: i for i, x in enumerate(LABELS)}
    texts = tiny["texts"][:16]
    batch = make_batch(texts, tiny["tokenizer"], max_seq_length=64)
    model.eval()
    with torch.no_grad():
        ours, theirs = model(batch.features()), loaded(**batch.features()).logits
    assert (ours - theirs).abs().max().item() < 1e-5
    # predict_logits (the evaluation path) gives the same logits in input order, and restores train mode
    model.train()
    assert np.abs(predict_logits(model, texts, tiny["tokenizer"], 5, 64) - theirs.numpy()).max() < 1e-5
    assert model.training

    clf = pipeline("text-classification", model=str(out), device="cpu")
    pred = clf("Die Funktion berechnet den Mittelwert der Zellen in einer Tabelle.")[0]
    assert pred["label"] in LABELS and 0 < pred["score"] <= 1


# -- training from cached states ------------------------------------------------------------------------


def _states_chunk(tiny, model: ClassifierStudent, n: int) -> pa.Table:
    """The first ``n`` texts with the states after the model's frozen layers, as the frozen pass
    caches them (``BottomStatesPredictor``, float16) and ``TaskFiles`` joins them."""
    from mdistill.teacher.predictor import BottomStatesPredictor

    predictor = BottomStatesPredictor(str(tiny["path"]), model.frozen_layers, 64, 8, prompt="", pooled=False)
    out = predictor(pa.table({"text": tiny["texts"][:n]}))
    assert "pooled" not in out.column_names  # pooled=False: the top layers never ran
    return out.append_column("label_id", pa.array(tiny["label_ids"][:n], pa.int64()))


def test_logits_from_cached_states_equal_the_full_forward_and_the_export(tiny, tmp_path):
    """What the top layers + head compute from the frozen pass's states is what the exported
    classifier computes from text: exactly from float32 states, within 1e-2 from the cache's float16."""
    from transformers import AutoModelForSequenceClassification

    from mdistill.models.split import run_layers

    model = _student(tiny)
    model.freeze_below(1)
    model.eval()
    texts = tiny["texts"][:16]
    ids, mask = make_batch(texts, tiny["tokenizer"], max_seq_length=64).features().values()
    base = model.model.bert
    with torch.no_grad():
        full = model({"input_ids": ids, "attention_mask": mask})
        h32 = run_layers(base, base.embeddings(input_ids=ids), mask, base.encoder.layer[: model.frozen_layers])
        assert (model({"hidden": h32, "attention_mask": mask}) - full).abs().max().item() < 1e-5

    chunk = _states_chunk(tiny, model, 16)
    logits = predict_state_logits(model, [chunk.slice(0, 7), chunk.slice(7)], batch_size=5)  # any chunking, row order kept
    assert np.abs(logits - full.numpy()).max() < 1e-2 and not model.training
    out = model.save(tmp_path / "clf", tiny["tokenizer"])
    loaded = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert np.abs(loaded(input_ids=ids, attention_mask=mask).logits.numpy() - logits).max() < 1e-2


def test_a_step_from_cached_states_trains_only_the_top_layers(tiny):
    model = _student(tiny)
    model.freeze_below(1)
    chunk = _states_chunk(tiny, model, 24)
    opt, sched = make_classifier_optimizer(model, lr=1e-2, head_lr=1e-1, weight_decay=0.0, total_steps=30, warmup_ratio=0.0)
    frozen = {n: p.detach().clone() for n, p in model.model.named_parameters() if not p.requires_grad}
    top = [p.detach().clone() for p in model.model.bert.encoder.layer[-1].parameters()]
    losses = []
    for epoch in range(6):
        for b in classify_batches([chunk], 8, random.Random(epoch), StateFeatures(), logits_column=None):
            assert b.inputs.is_floating_point() and b.inputs.dim() == 3 and "hidden" in b.features()
            losses.append(classify_train_step(model, opt, sched, b, "supervised", 1.0, 0.5)["loss"])
    assert all(torch.equal(frozen[n], p) for n, p in model.model.named_parameters() if n in frozen)
    assert all(not torch.equal(a, b) for a, b in zip(top, model.model.bert.encoder.layer[-1].parameters()))
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])  # it learns the labels of these rows
