"""The teacher pass on real Ray (local, 2 CPUs) and its content-addressed cache: correctness,
incremental re-runs, fingerprints, and faults (a killed driver, a killed actor, a corrupt shard)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mdistill.config import TeacherConfig
from mdistill.teacher.cache import EmbeddingCache, cache_stats, verify_cache

from conftest import teacher_pass


def texts_of(pairs, n: int) -> list[str]:
    base = list(dict.fromkeys(pairs.en))
    return [f"{base[i % len(base)]} ({i})" for i in range(n)]


def direct(model_dir, texts):
    from mdistill.encode import encode_batch, load_sentence_transformer

    return encode_batch(load_sentence_transformer(str(model_dir), device="cpu", max_seq_length=128), texts, prompt="")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_cache_equals_direct_output_reruns_compute_only_new_texts(tmp_path, tiny_models, pairs, ray_shared):
    cfg = TeacherConfig(model=str(tiny_models["teacher"]), batch_size=32)
    texts = texts_of(pairs, 600)
    cache, st = teacher_pass(cfg, texts + texts[:50], tmp_path)  # repeats are encoded once
    assert st.distinct_texts == 600 and st.computed == 600
    np.testing.assert_allclose(cache.lookup(texts), direct(tiny_models["teacher"], texts), atol=1e-5)

    _, st = teacher_pass(cfg, texts, tmp_path)
    assert st.computed == 0 and st.cache_hits == 600  # returns before any actor starts

    more = texts_of(pairs, 660)[600:]  # +10% new sentences
    cache, st = teacher_pass(cfg, texts + more, tmp_path)
    assert st.computed == 60 and st.cache_hits == 600
    assert cache_stats(cache.dir)["distinct_keys"] == cache_stats(cache.dir)["rows"] == 660

    # what changes outputs changes the fingerprint: another teacher never reads these vectors
    _, st_len = teacher_pass(cfg.model_copy(update={"max_seq_length": 64}), texts[:10], tmp_path)
    assert st_len.fingerprint != st.fingerprint and st_len.computed == 10
    other = tmp_path / "teacher-cls"
    shutil.copytree(tiny_models["teacher"], other)
    pooling = next(other.glob("*Pooling/config.json"))
    conf = json.loads(pooling.read_text())
    conf.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(conf))
    _, st_pool = teacher_pass(cfg.model_copy(update={"model": str(other)}), texts[:10], tmp_path)
    assert st_pool.fingerprint not in (st.fingerprint, st_len.fingerprint) and st_pool.computed == 10


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_corrupt_shard_is_detected_and_its_texts_recomputed(tmp_path, tiny_models, pairs, ray_shared):
    cfg = TeacherConfig(model=str(tiny_models["teacher"]), batch_size=32)
    texts = texts_of(pairs, 300)
    cache, _ = teacher_pass(cfg, texts, tmp_path)
    shard = cache.shards()[0]
    lost = EmbeddingCache(tmp_path / "teacher", cache.fingerprint)._read(shard, ["key"]).num_rows
    shard.write_bytes(shard.read_bytes()[:100])  # a truncated shard
    cache, st = teacher_pass(cfg, texts, tmp_path)
    assert st.corrupt_shards == [str(shard)] and st.computed == lost
    assert (cache.dir / "corrupt" / shard.name).exists() and not verify_cache(cache.dir)["bad_shards"]
    np.testing.assert_allclose(cache.lookup(texts), direct(tiny_models["teacher"], texts), atol=1e-5)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(500)
def test_killed_actor_mid_pass_every_text_present_once(tmp_path, tiny_models, pairs, ray_shared):
    import psutil

    cfg = TeacherConfig(model=str(tiny_models["teacher"]), batch_size=16)
    texts = texts_of(pairs, 12_000)
    killed: list[int] = []

    def kill_actor_once_a_shard_lands():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            shards = list((tmp_path / "teacher").glob("*/*.parquet"))
            actors = [p for p in psutil.process_iter(["cmdline"]) if "TeacherPredictor" in " ".join(p.info["cmdline"] or [])]
            if shards and actors:
                actors[0].kill()
                killed.append(actors[0].pid)
            time.sleep(0.05)

    t = threading.Thread(target=kill_actor_once_a_shard_lands, daemon=True)
    t.start()
    cache, st = teacher_pass(cfg, texts, tmp_path)
    t.join()
    assert killed, "the pass ended before an actor could be killed"
    stats = cache_stats(cache.dir)
    assert stats["rows"] == stats["distinct_keys"] == len(texts)  # every sentence present, once
    np.testing.assert_allclose(cache.lookup(texts[::500]), direct(tiny_models["teacher"], texts[::500]), atol=1e-5)


DRIVER = """
import sys, ray
from pathlib import Path
sys.path.insert(0, sys.argv[5])  # the tests folder: conftest.teacher_pass, the recipe's teacher stage
from conftest import teacher_pass
from mdistill.config import TeacherConfig
model, root, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
texts = [line for line in Path(sys.argv[4]).read_text().split("\\n") if line][:n]
ray.init(address="local", num_cpus=2, include_dashboard=False)
_, st = teacher_pass(TeacherConfig(model=model, batch_size=16), texts, root)
print("COMPUTED", st.computed)
"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(500)
def test_killed_driver_rerun_reuses_committed_shards_and_ends_like_a_clean_run(tmp_path, tiny_models, pairs):
    texts = texts_of(pairs, 12_000)
    tf = tmp_path / "texts.txt"
    tf.write_text("\n".join(texts))
    root = tmp_path / "killed"
    args = [sys.executable, "-c", DRIVER, str(tiny_models["teacher"]), str(root), str(len(texts)), str(tf), str(Path(__file__).parent)]
    # the driver and the local Ray it started, in their own process group: kill them all at once
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 420
    while time.time() < deadline and not list(root.glob("teacher/*/*.parquet")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(root.glob("teacher/*/*.parquet")), "no shard committed within 420 s (an overloaded machine?)"
    (fp_dir,) = list((root / "teacher").iterdir())
    committed = cache_stats(fp_dir)["rows"]
    assert 0 < committed < len(texts), "kill the driver mid-pass"

    out = subprocess.run(args, capture_output=True, text=True, timeout=400, start_new_session=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"COMPUTED {len(texts) - committed}" in out.stdout  # only what the killed run had not committed
    assert not verify_cache(fp_dir)["bad_shards"]  # nothing partial was read

    cache = EmbeddingCache(root / "teacher", fp_dir.name)
    stats = cache_stats(fp_dir)
    assert stats["rows"] == stats["distinct_keys"] == len(texts)
    sample = texts[::400]
    np.testing.assert_allclose(cache.lookup(sample), direct(tiny_models["teacher"], sample), atol=1e-5)
