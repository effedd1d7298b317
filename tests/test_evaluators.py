"""Evaluators: equal to sentence-transformers' own evaluators on the same model and data; bitext
mining on constructed pools with known answers; STS and classification against references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from mdistill.encode import load_sentence_transformer
from mdistill.evaluation import (
    BitextMiningEvaluator,
    ClassificationEvaluator,
    MSEEvaluator,
    STSEvaluator,
    TeacherSpaceEvaluator,
    TranslationEvaluator,
)
from mdistill.evaluation.table import language_row


@pytest.fixture(scope="module")
def de_pairs(pairs):
    de = pairs[pairs.lang == "de"].drop_duplicates("en").drop_duplicates("text").head(80)
    return list(de.en), list(de.text)


def test_mse_and_translation_equal_sentence_transformers(tiny_models, de_pairs):
    from sentence_transformers.evaluation import MSEEvaluator as STMSE
    from sentence_transformers.evaluation import TranslationEvaluator as STTranslation

    en, xx = de_pairs
    teacher = load_sentence_transformer(str(tiny_models["teacher"]), device="cpu")
    student = load_sentence_transformer(str(tiny_models["student"]), device="cpu")  # has a default prompt: both apply it

    st_mse = STMSE(en, xx, teacher_model=teacher, batch_size=16, write_csv=False)(student)
    ours = MSEEvaluator(en, xx, teacher, batch_size=16)(student)
    assert st_mse["negative_mse"] < 0  # sentence-transformers 6.x reports -MSE x 100
    assert ours["mse100"] == pytest.approx(-st_mse["negative_mse"], abs=1e-6)

    for model in (student, teacher):
        st_tr = STTranslation(en, xx, batch_size=16, write_csv=False)(model)
        tr = TranslationEvaluator(en, xx, batch_size=16)(model)
        for key in ("src2trg_accuracy", "trg2src_accuracy", "mean_accuracy"):
            assert tr[key] == pytest.approx(st_tr[key], abs=1e-6), key
    assert 0 < tr["src2trg_accuracy"] <= 1  # the test would be vacuous on an all-zero score

    # the run's table row gives the same numbers from cached vectors
    s_en, s_xx = student.encode(en, convert_to_numpy=True), student.encode(xx, convert_to_numpy=True)
    t_en = teacher.encode(en, convert_to_numpy=True)
    row = language_row(s_xx, s_en, t_en)
    assert row.mse100 == pytest.approx(-st_mse["negative_mse"], abs=1e-6)
    st_tr = STTranslation(en, xx, write_csv=False)(student)
    assert row.translation_top1_en2xx == st_tr["src2trg_accuracy"] and row.translation_top1_xx2en == st_tr["trg2src_accuracy"]
    ts = TeacherSpaceEvaluator(en, xx, teacher)(student)
    assert ts["teacher_space_top1"] == row.teacher_space_top1 and 0 <= ts["teacher_space_top1_en"] <= 1
    assert row.bitext_f1 is not None and 0 <= row.bitext_f1 <= 1


def test_teacher_space_undefined_across_dimensions():
    rng = np.random.default_rng(0)
    row = language_row(rng.normal(size=(10, 8)), rng.normal(size=(10, 8)), rng.normal(size=(10, 4)))
    assert row.teacher_space_top1 is None and row.mse100 is None and row.translation_top1_xx2en is not None


def test_pooled_teacher_space_index_shared_by_languages():
    """One index for several languages: query i's answer is ``answers[i]`` (the dev metric during training)."""
    keys = np.eye(3)
    queries = keys[[0, 1, 1, 2]]  # the third query lands on key 1, its answer is 2
    r = TeacherSpaceEvaluator.compute(queries, keys, answers=[0, 1, 2, 2])
    assert r["teacher_space_top1"] == 0.75


def _pool(n_pairs=40, n_src_distract=15, n_tgt_distract=25, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_pairs, dim))
    src = np.vstack([base, rng.normal(size=(n_src_distract, dim))])
    tgt = np.vstack([base + 0.05 * rng.normal(size=base.shape), rng.normal(size=(n_tgt_distract, dim))])
    # shuffle the target side so gold is not the diagonal
    perm = rng.permutation(len(tgt))
    inv = np.argsort(perm)
    return src, tgt[perm], [(i, int(inv[i])) for i in range(n_pairs)]


@pytest.mark.parametrize("mode", ["max_score", "forward", "backward", "intersection"])
def test_bitext_mining_finds_every_pair_among_distractors(mode):
    src, tgt, gold = _pool()
    r = BitextMiningEvaluator.compute(src, tgt, gold, k=4, mode=mode)
    assert r["f1"] == 1.0 and r["precision"] == 1.0 and r["recall"] == 1.0
    assert r["n_gold"] == 40 and r["n_correct"] == 40 and r["n_mined"] == 40


def test_bitext_mining_partial_when_pairs_are_corrupted():
    src, tgt, gold = _pool()
    rng = np.random.default_rng(1)
    for _, j in gold[:10]:  # 10 of 40 targets replaced by unrelated sentences: 30 findable pairs
        tgt[j] = rng.normal(size=tgt.shape[1])
    r = BitextMiningEvaluator.compute(src, tgt, gold)
    # best threshold keeps exactly the 30 true pairs: P = 1, R = 30/40, F1 = 2*0.75/1.75
    assert r["precision"] == 1.0 and r["recall"] == 0.75 and r["f1"] == pytest.approx(6 / 7)
    # a fixed threshold above every score mines nothing
    assert BitextMiningEvaluator.compute(src, tgt, gold, threshold=1e9)["f1"] == 0.0


def test_ratio_margin_by_hand():
    rng = np.random.default_rng(3)
    x, y, k = rng.normal(size=(6, 5)), rng.normal(size=(7, 5)), 3
    xu, yu = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
    sim = xu @ yu.T
    x_den = np.sort(sim, 1)[:, -k:].sum(1) / (2 * k)
    y_den = np.sort(sim.T, 1)[:, -k:].sum(1) / (2 * k)
    margin = sim / (x_den[:, None] + y_den[None, :])
    fwd = BitextMiningEvaluator.mine(x, y, k=k, mode="forward")
    for i, j, s in fwd:  # each source's best candidate among its k nearest, by margin
        nn = np.argsort(-sim[i])[:k]
        assert j == nn[np.argmax(margin[i, nn])] and s == pytest.approx(margin[i, j], rel=1e-5)


def test_bitext_pool_from_pairs_has_distractors_both_sides():
    s, t, gold = BitextMiningEvaluator.pool_from_pairs(12)
    assert len(gold) == 6 and len(s) == len(t) == 9
    assert all(s[i] == t[j] for i, j in gold)
    en = np.eye(12)
    assert BitextMiningEvaluator.pool_f1(en, en) == 1.0 and BitextMiningEvaluator.pool_f1(en[:5], en[:5]) is None


def test_sts_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    scores = np.round(rng.uniform(0, 5, size=50))  # ties in the gold scores
    r = STSEvaluator.compute(a, b, scores)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert r["spearman_cosine"] == pytest.approx(spearmanr(cos, scores).statistic, abs=1e-9)
    assert r["pearson_cosine"] == pytest.approx(pearsonr(cos, scores).statistic, abs=1e-6)


def test_sts_with_a_model(tiny_models, de_pairs):
    en, xx = de_pairs
    model = load_sentence_transformer(str(tiny_models["teacher"]), device="cpu")
    scores = np.arange(len(en)) % 5
    r = STSEvaluator(en, xx, scores)(model)
    cos = (model.encode(en, normalize_embeddings=True) * model.encode(xx, normalize_embeddings=True)).sum(1)
    assert r["spearman_cosine"] == pytest.approx(spearmanr(cos, scores).statistic, abs=1e-4)


def test_classification_by_hand():
    logits = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    labels = [0, 1, 2, 2, 1]  # preds 0, 1, 1, 2, 0
    r = ClassificationEvaluator.compute(logits, labels)
    assert r["accuracy"] == 3 / 5
    # class 0: tp 1, pred 2, true 1 -> 2/3; class 1: tp 1, pred 2, true 2 -> 1/2; class 2: tp 1, pred 1, true 2 -> 2/3
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    # a class only predicted (never true) counts with F1 0, like scikit-learn
    assert ClassificationEvaluator.compute(np.array([0, 1]), [0, 0])["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_mdistill_eval_cli(tmp_path, tiny_models, pairs):
    """`mdistill eval`: several models and the teacher in one table; a model of another dimension
    gets null teacher-space metrics instead of a crash; STS when given."""
    import json

    from typer.testing import CliRunner

    from mdistill.cli import app

    from conftest import make_tiny_model

    data = tmp_path / "pairs.jsonl"
    sub = pairs.drop_duplicates(["lang", "en"]).groupby("lang").head(40)
    sub.assign(split="test").to_json(data, orient="records", lines=True, force_ascii=False)
    sts = tmp_path / "sts.tsv"
    sub.head(30).assign(s1=sub.en.head(30), s2=sub.text.head(30), score=np.arange(30) % 6)[["s1", "s2", "score"]].to_csv(
        sts, sep="\t", index=False
    )
    other = make_tiny_model(tmp_path / "narrow", list(pairs.en) + list(pairs.text), layers=1, hidden=16, seed=3)

    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_models["student"]), "--model", str(other), "--teacher", str(tiny_models["teacher"])]
    r = CliRunner().invoke(app, [*args, "--data", str(data), "--out", str(out), "--sts", str(sts), "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "eval.json").read_text())
    assert set(res["metrics"]) == {"de", "fr"} and res["split"] == "test"
    de, models = res["metrics"]["de"], res["metrics"]["de"]["models"]
    assert set(models) == {"teacher", "student", "narrow"} and de["n"] == 40
    narrow = models["narrow"]
    assert narrow["teacher_space_top1"] is None and narrow["mse100"] is None and narrow["translation_top1_xx2en"] is not None
    assert models["student"]["teacher_space_top1"] is not None and models["teacher"]["mse100"] > 0
    assert res["summary"]["narrow"]["teacher_space_top1"] is None and res["models"]["narrow"]["dim"] == 16
    assert -1 <= res["sts"]["models"]["student"]["spearman_cosine"] <= 1
    md = (out / "eval.md").read_text()
    assert "| de | 40 | narrow |" in md and "](eval_metrics.png)" in md
    assert (out / "eval_metrics.png").read_bytes()[:4] == b"\x89PNG"
