"""The classify recipe's stage pieces without Ray: per-language metrics, the confusion matrix, the
transfer checks, each role's rows (teacher logits joined by English source) and its steps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mdistill.config import TrainConfig
from mdistill.stages import classify
from mdistill.teacher.cache import EmbeddingCache, text_key


def _eval_rows() -> pa.Table:
    return pa.table(
        {
            "text": ["a", "b", "c", "A", "B", "C", "d"],
            "lang": ["en", "en", "en", "de", "de", "de", "en"],
            "en": ["a", "b", "c", "a", "b", "c", "d"],
            "label_id": pa.array([0, 1, 1, 0, 1, 1, 0], pa.int64()),
            "split": ["test"] * 6 + ["dev"],
        }
    )


def test_metrics_per_language_and_split_use_the_evaluator():
    rows = _eval_rows()
    # predictions: en all right; de: row "A" wrong (predicted 1)
    logits = np.array([[2, 0], [0, 2], [0, 2], [0, 2], [0, 2], [0, 2], [0, 2]], dtype=np.float32)
    test = classify.metrics_table(rows, {"m": logits}, "test")
    assert list(test) == ["en", "de"]  # English first
    assert test["en"]["m"].accuracy == 1.0 and test["en"]["m"].n == 3
    assert test["de"]["m"].accuracy == pytest.approx(2 / 3)
    assert test["de"]["m"].macro_f1 == pytest.approx((0 + 0.8) / 2)  # class 0: no hit; class 1: P=2/3, R=1
    assert classify.metrics_table(rows, {"m": logits}, "dev")["en"]["m"].accuracy == 0.0
    cm = classify.confusion(rows, logits, "test", 2)  # translations only
    assert cm == [[0, 1], [0, 2]]
    assert classify.confusion(rows, logits, "test", 2, english=True) == [[1, 0], [0, 2]]


def test_transfer_checks_compare_with_zero_shot_and_the_english_teacher():
    from mdistill.report.schema import ClassMetrics

    m = lambda a: ClassMetrics(accuracy=a, macro_f1=a, n=10)  # noqa: E731
    test = {
        "en": {"teacher": m(0.9), "soft": m(0.9), "zero_shot": m(0.9)},
        "de": {"teacher": m(0.3), "soft": m(0.86), "zero_shot": m(0.84)},
    }
    checks = classify.transfer_checks(test, "soft")
    assert checks == {"soft_vs_zero_shot": {"de": False}, "soft_vs_teacher_en": {"de": True}}  # +2 points < 3; 0.86 >= 0.855
    assert classify.transfer_checks(test, "soft", margin=0.02)["soft_vs_zero_shot"] == {"de": True}


def test_role_rows_and_steps(tmp_path):
    train = _eval_rows().drop_columns(["split"])
    train = train.append_column("labelled", pa.array([e in ("a", "b") for e in train.column("en").to_pylist()]))  # c, d: unlabelled
    cache = EmbeddingCache(tmp_path, "fp")
    logits = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], dtype=np.float32)
    cache.write_table(
        pa.table({"key": [text_key(t) for t in "abcd"], "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), 2)})
    )
    train = classify.with_teacher_logits(train, cache)
    got = np.array(train.column("logits").to_pylist())
    want = logits[["abcd".index(e) for e in train.column("en").to_pylist()]]
    np.testing.assert_array_equal(got, want)  # every translation carries its English source's logits
    # the English classifiers: the labelled English paragraphs alone
    for role in ("teacher", "zero_shot"):
        assert classify.role_rows(train, role).column("text").to_pylist() == ["a", "b"], role
    # the upper bound: every row, every gold label
    assert classify.role_rows(train, "translate_train").column("label_id").to_pylist() == [0, 1, 1, 0, 1, 1, 0]
    # the distilled students: every row, the gold label only where the user has it
    for role in ("soft", "hard", "online"):
        rows = classify.role_rows(train, role)
        assert rows.column("text").to_pylist() == list("abcABCd"), role
        assert rows.column("label_id").to_pylist() == [0, 1, None, 0, 1, None, None], role
    t = TrainConfig(epochs=1)
    assert classify.role_train_config(t, "zero_shot", 200, 1000).epochs == 5  # the students' steps
    assert classify.role_train_config(t, "soft", 1000, 1000) is t


def test_online_starts_first_when_students_queue_for_slots():
    from mdistill.stages.classify import longest_first

    assert longest_first(["zero_shot", "translate_train", "soft", "hard", "online"]) == [
        "online",
        "zero_shot",
        "translate_train",
        "soft",
        "hard",
    ]
    assert longest_first(["soft", "hard"]) == ["soft", "hard"]


def test_bf16_teacher_logits_are_cached_apart_from_float32_ones():
    """``teacher.cpu_bf16`` changes the logits, so it keys the cache; off, the key is what it was
    before the option existed (existing float32 caches stay valid)."""
    from mdistill.config import TeacherConfig
    from mdistill.stages.teacher import teacher_settings

    off, on = (teacher_settings(TeacherConfig(kind="classifier", cpu_bf16=b)) for b in (False, True))
    assert "cpu_bf16" not in off and on == off | {"cpu_bf16": True}
