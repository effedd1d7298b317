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


def _damage_column(shard, column: str, n: int = 16, seed: int = 0) -> None:
    """Overwrite ``n`` bytes in the middle of ``column``'s pages (not a header of the file, not its footer)."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(shard).metadata.row_group(0)
    chunk = next(md.column(i) for i in range(md.num_columns) if md.column(i).path_in_schema.split(".")[0] == column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    mid = start + chunk.total_compressed_size // 2
    raw = bytearray(shard.read_bytes())
    raw[mid : mid + n] = np.random.default_rng(seed).bytes(n)
    shard.write_bytes(bytes(raw))


def _verify_cli(root) -> str:
    from typer.testing import CliRunner

    from mdistill.cli import app

    r = CliRunner().invoke(app, ["cache", "verify", "--cache-dir", str(root)])
    return r.output + f"[exit {r.exit_code}]"


def test_verify_detects_bytes_damaged_in_the_middle_of_the_data_pages(tmp_path):
    import pyarrow.parquet as pq

    from mdistill.teacher.cache import verify_cache

    c = EmbeddingCache(tmp_path / "teacher", "fp")
    v = np.random.default_rng(0).normal(size=(970, 64)).astype(np.float32)
    keys = [text_key(str(i)) for i in range(970)]
    shard = c.write(keys, v)
    good = c.write([text_key("other")], np.ones((1, 64), np.float32))
    _damage_column(shard, "embedding")
    # the premise: without checksums these bytes read back as silently changed vectors
    silent = pq.read_table(shard, page_checksum_verification=False)
    assert (np.asarray(silent.column("embedding").combine_chunks().flatten()).reshape(970, 64) != v).any()

    r = verify_cache(c.dir)
    assert r["bad_shards"] == [str(shard)] and "checksum" in r["problems"][str(shard)].lower(), r
    out = _verify_cli(tmp_path)
    assert "1 bad shard(s)" in out and str(shard) in out and "[exit 1]" in out, out
    assert verify_cache(c.dir, fix=True)["moved"] == [str(c.dir / "corrupt" / shard.name)]
    assert c.shards() == [good] and verify_cache(c.dir)["bad_shards"] == []


def test_lookup_never_returns_vectors_from_a_shard_that_fails_its_checksum(tmp_path):
    c = EmbeddingCache(tmp_path, "fp")
    v = np.random.default_rng(1).normal(size=(500, 32)).astype(np.float32)
    texts = [f"text {i}" for i in range(500)]
    shard = c.write([text_key(t) for t in texts], v)
    _damage_column(shard, "embedding")
    with pytest.raises(KeyError, match="no vector"):
        c.lookup(texts)  # recomputed, never served changed
    assert c.corrupt == [shard]


def test_readable_shards_sets_aside_damaged_keys_and_another_vector_size(tmp_path):
    c = EmbeddingCache(tmp_path, "fp")
    texts = [f"text {i}" for i in range(2000)]
    damaged = c.write([text_key(t) for t in texts], np.zeros((2000, 8), np.float32))
    _damage_column(damaged, "key")
    good = c.write([text_key("a"), text_key("b")], np.ones((2, 8), np.float32))
    wrong_dim = c.write([text_key("c")], np.ones((1, 4), np.float32))
    assert c.readable_shards() == [good]
    assert sorted(c.corrupt) == sorted([damaged, wrong_dim])
    assert sorted(p.name for p in (c.dir / "corrupt").iterdir()) == sorted([damaged.name, wrong_dim.name])


def test_verify_reports_a_valid_shard_holding_nan_vectors(tmp_path):
    from mdistill.teacher.cache import verify_cache

    c = EmbeddingCache(tmp_path / "teacher", "fp")
    c.write([text_key("a")], np.ones((1, 8), np.float32))
    v = np.ones((5, 8), np.float32)
    v[3, 2] = np.nan
    v[4, 0] = np.inf
    bad = c.write([text_key(t) for t in "bcdef"], v, dtype="float16")
    r = verify_cache(c.dir)
    assert r["bad_shards"] == [str(bad)] and r["problems"][str(bad)] == "embedding: 2 of 5 vector(s) not finite (NaN/inf), first at row 3"
    assert "not finite" in _verify_cli(tmp_path)


def test_verify_reports_a_shard_whose_vector_size_differs_from_the_others_and_meta_dim(tmp_path):
    from mdistill.teacher.cache import verify_cache

    c = EmbeddingCache(tmp_path, "fp")
    a = c.write([text_key(t) for t in "ab"], np.ones((2, 8), np.float32))
    b = c.write([text_key("c")], np.ones((1, 8), np.float32))
    odd = c.write([text_key("d")], np.ones((1, 4), np.float32))
    r = verify_cache(c.dir)
    assert r["bad_shards"] == [str(odd)]
    assert r["problems"][str(odd)] == "embedding has 4 values per vector, the cache 8 (most rows)"
    c.write_meta(dim=4)  # what the model produces, recorded: the 8-wide shards are the wrong ones
    r = verify_cache(c.dir)
    assert r["bad_shards"] == sorted([str(a), str(b)]) and "(meta.json dim)" in r["problems"][str(a)]


def test_verify_reports_frozen_pass_states_with_wrong_size_or_nan(tmp_path):
    import pyarrow as pa

    from mdistill.teacher.cache import embeddings_table, verify_cache

    c = EmbeddingCache(tmp_path, "fp")

    def states(key: str, hidden: np.ndarray, length: int) -> pa.Table:
        t = embeddings_table([key], np.ones((1, 4), np.float32)).rename_columns(["key", "pooled"])
        t = t.append_column("hidden", pa.array([hidden.astype(np.float16).tobytes()], pa.binary()))
        return t.append_column("length", pa.array([length], pa.int32())).append_column("dim", pa.array([4], pa.int32()))

    c.write_table(states("a", np.ones((3, 4)), 3))
    short = c.write_table(states("b", np.ones((2, 4)), 3))
    nan = c.write_table(states("c", np.full((3, 4), np.nan), 3))
    r = verify_cache(c.dir)
    assert r["bad_shards"] == sorted([str(short), str(nan)]), r
    assert "not length x dim" in r["problems"][str(short)] and "non-finite" in r["problems"][str(nan)]


def test_shards_written_without_checksums_still_read_and_verify(tmp_path):
    """Caches from before page checksums: pyarrow checks only pages that carry one."""
    import pyarrow.parquet as pq

    from mdistill.teacher.cache import embeddings_table, verify_cache

    c = EmbeddingCache(tmp_path, "fp")
    c.dir.mkdir(parents=True)
    v = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    old = c.dir / "old.parquet"
    pq.write_table(embeddings_table([text_key(t) for t in "abc"], v), old)  # what the old write_table wrote
    assert pq.read_table(old, page_checksum_verification=True).num_rows == 3
    new = c.write([text_key("d")], np.ones((1, 8), np.float32))
    assert c.readable_shards() == sorted([old, new]) and c.corrupt == []
    np.testing.assert_array_equal(c.lookup(["c", "a", "d"]), np.vstack([v[[2, 0]], np.ones((1, 8), np.float32)]))
    assert verify_cache(c.dir)["bad_shards"] == []
