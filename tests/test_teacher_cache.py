import re

import numpy as np
import pytest

from mdistill.teacher.cache import EmbeddingCache, model_fingerprint, text_key


def test_write_lookup_missing_roundtrip(tmp_path):
    c = EmbeddingCache(tmp_path, "fp")
    v = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    c.write([text_key(t) for t in "abc"], v)
    assert c.missing(["a", "b", "d", "d"]) == ["d"]
    np.testing.assert_array_equal(c.lookup(["c", "a"]), v[[2, 0]])
    with pytest.raises(KeyError, match="'d'"):
        c.lookup(["d"])


def test_float16_storage(tmp_path):
    c = EmbeddingCache(tmp_path, "fp")
    v = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    c.write([text_key("x"), text_key("y")], v, dtype="float16")
    np.testing.assert_allclose(c.lookup(["x", "y"]), v, atol=1e-2)


def test_partial_files_are_ignored_and_corrupt_shards_recomputed(tmp_path):
    c = EmbeddingCache(tmp_path, "fp")
    c.write([text_key("a")], np.ones((1, 4), np.float32))
    (c.dir / ".half-written.parquet.tmp").write_bytes(b"PAR1 garbage")
    bad = c.write([text_key("b")], np.ones((1, 4), np.float32))
    bad.write_bytes(bad.read_bytes()[:20])  # truncated shard
    assert c.missing(["a", "b"]) == ["b"]  # b's shard is unreadable: recompute it
    assert c.corrupt == [bad]


def test_other_teacher_never_reads_these_vectors(tmp_path):
    EmbeddingCache(tmp_path, "teacher-a").write([text_key("a")], np.ones((1, 4), np.float32))
    assert EmbeddingCache(tmp_path, "teacher-b").missing(["a"]) == ["a"]


def test_fingerprint_covers_weights_and_settings(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    base = model_fingerprint(tmp_path, max_seq_length=128, pooling="mean")
    assert base == model_fingerprint(tmp_path, max_seq_length=128, pooling="mean")
    assert base != model_fingerprint(tmp_path, max_seq_length=256, pooling="mean")
    assert base != model_fingerprint(tmp_path, max_seq_length=128, pooling="cls")
    (tmp_path / "model.safetensors").write_bytes(b"weights2")
    assert base != model_fingerprint(tmp_path, max_seq_length=128, pooling="mean")


def test_read_table_returns_one_row_per_text(tmp_path):
    c = EmbeddingCache(tmp_path, "fp")
    c.write([text_key(t) for t in "ab"], np.eye(2, 4, dtype=np.float32))
    c.write([text_key("a")], np.ones((1, 4), np.float32))  # the same key written twice
    t = c.read_table(["a", "b", "a"], ["embedding"])
    assert sorted(t.column("key").to_pylist()) == sorted([text_key("a"), text_key("b")])
    with pytest.raises(KeyError, match="1 of 2"):
        c.read_table(["a", "zz"], ["embedding"])


def test_verify_finds_and_quarantines_a_corrupt_shard_and_gc_cleans(tmp_path):
    import os
    import time

    from mdistill.teacher.cache import cache_stats, gc_cache, verify_cache

    c = EmbeddingCache(tmp_path, "fp")
    c.write_meta(model="m", kind="embedding")
    c.write([text_key("a")], np.ones((1, 4), np.float32))
    bad = c.write([text_key("b")], np.ones((1, 4), np.float32))
    bad.write_bytes(bad.read_bytes()[:30])
    old_tmp = c.dir / ".left-by-a-killed-pass.parquet.tmp"
    old_tmp.write_bytes(b"partial")
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    young_tmp = c.dir / ".being-written.parquet.tmp"
    young_tmp.write_bytes(b"partial")

    st = cache_stats(c.dir)
    assert st["shards"] == 2 and st["rows"] == 1 and st["unreadable_shards"] == [str(bad)] and st["leftover_tmp"] == 2
    r = verify_cache(c.dir)
    assert r["bad_shards"] == [str(bad)] and bad.exists()
    r = verify_cache(c.dir, fix=True)
    assert not bad.exists() and (c.dir / "corrupt" / bad.name).exists()
    assert EmbeddingCache(tmp_path, "fp").missing(["a", "b"]) == ["b"]  # its text is computed again

    removed = gc_cache(tmp_path)
    assert set(removed) == {old_tmp, c.dir / "corrupt"}  # a pass may still own the young temp file
    assert young_tmp.exists() and len(c.shards()) == 1
    assert gc_cache(tmp_path, unused_days=-1, dry_run=True) == [c.dir]


def test_logits_predictor_matches_the_classifier_and_is_keyed_by_text(tmp_path, pairs):
    import pyarrow as pa
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from mdistill.teacher.cache import embedding_matrix
    from mdistill.teacher.predictor import LogitsPredictor

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for t in pairs.en[:50] for w in t.lower().split()})]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertForSequenceClassification(
        BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=3)
    ).save_pretrained(tmp_path)

    texts = list(pairs.en[:20])
    out = LogitsPredictor(str(tmp_path), max_seq_length=64, batch_size=7)(pa.table({"text": texts}))
    assert out.column_names == ["key", "logits"] and out.column("key").to_pylist() == [text_key(t) for t in texts]
    model = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    tok = BertTokenizerFast.from_pretrained(tmp_path)
    with torch.no_grad():
        want = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts]).numpy()
    np.testing.assert_allclose(embedding_matrix(out.column("logits")), want, atol=1e-5)  # padding in batches changes nothing


def test_cache_cli_rejects_a_missing_cache_dir_and_negative_unused_days(tmp_path):
    from typer.testing import CliRunner

    from mdistill.cli import app

    def usage_error(*args: str) -> str:
        r = CliRunner().invoke(app, ["cache", *args])
        assert r.exit_code == 2, r.output
        return " ".join(re.sub("[│╭╮╰╯─]", " ", r.output).split())  # typer's error box, unwrapped

    missing = tmp_path / "typo"
    for command in ("stats", "verify", "gc"):
        out = usage_error(command, "--cache-dir", str(missing))
        assert "Invalid value for '--cache-dir'" in out and "does not exist" in out, out
    (tmp_path / "teacher").mkdir()
    out = usage_error("gc", "--cache-dir", str(tmp_path), "--unused-days", "-5")
    assert "Invalid value for '--unused-days': -5 days: must be >= 0" in out, out  # would remove caches in use
