"""Benchmark: the teacher pass (Ray Data actor pool + Parquet cache) vs ``SentenceTransformer.encode``.

    python benchmarks/teacher_pass.py --corpus ~/.cache/mdistill/corpora/<fp> --distinct 50000 \
        --multi 12000 --out benchmarks/results/teacher_pass.json

Three measurements, side by side in one run on the same machine, the same teacher
(all-MiniLM-L6-v2), the same torch threads (all cores):
1. ``distinct``: N distinct English sentences. encode(all) vs a cold teacher pass (Ray start-up
   included: ``ray.init`` + actor start + cache writes), each in a fresh subprocess.
2. ``multi``: the 4-language corpus, where an English source repeats once per language.
   encode(every pair's English side) vs the teacher pass (which embeds each distinct sentence once).
3. ``warm``: the teacher pass again with 10% new sentences, vs the cold pass of (1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def child_encode(texts_file: Path, threads: int, batch_size: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from mdistill.assets import resolve_model

    torch.set_num_threads(threads)
    texts = json.loads(texts_file.read_text())
    t0 = time.perf_counter()
    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2", Path("/tmp")), device="cpu")
    model.max_seq_length = 128
    t_load = time.perf_counter() - t0
    model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
    return {"wall_s": time.perf_counter() - t0, "load_s": t_load, "texts": len(texts)}


def child_mdistill(texts_file: Path, cache_dir: Path, batch_size: int) -> dict:
    import ray

    from mdistill.config import TeacherConfig
    from mdistill.stages import cache_pass
    from mdistill.stages.teacher import open_teacher

    texts = json.loads(texts_file.read_text())
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    t_init = time.perf_counter() - t0
    # the recipe's teacher stage (pipelines/run.py, step 2)
    teacher = open_teacher(TeacherConfig(model="all-MiniLM-L6-v2", batch_size=batch_size), cache_dir)
    with teacher.cache.lock():
        todo = cache_pass.plan(teacher.cache, cache_pass.Distinct(ray.data.from_items([{"text": t} for t in texts]), len(texts)), None)
        vectors = todo.rows.map_batches(teacher.predictor, **teacher.pool_args(ray.nodes())) if todo.rows else None
        st = cache_pass.commit(todo, vectors)
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {
        "wall_s": wall,
        "ray_init_s": t_init,
        "texts": len(texts),
        "distinct_texts": st.distinct_texts,
        "computed": st.computed,
        "cache_hits": st.cache_hits,
    }


def run(mode: str, *args) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if out.returncode:
        raise RuntimeError(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, help="a corpus built by mdistill (pairs/), e.g. mdistill corpus build debian")
    ap.add_argument("--distinct", type=int, default=50_000)
    ap.add_argument("--multi", type=int, default=12_000, help="English sentences that have all 4 languages")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mdistill-bench-teacher"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs="+")
    a = ap.parse_args()
    if a.child:
        mode, *rest = a.child
        res = (
            child_encode(Path(rest[0]), int(rest[1]), int(rest[2]))
            if mode == "encode"
            else child_mdistill(Path(rest[0]), Path(rest[1]), int(rest[2]))
        )
        print(json.dumps(res))
        return

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pairs = pq.read_table(a.corpus / "pairs", columns=["en", "lang"])
    english = sorted(set(pairs.column("en").to_pylist()))
    import random

    random.Random(0).shuffle(english)
    a.work.mkdir(parents=True, exist_ok=True)
    threads = os.cpu_count()
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": threads, "batch_size": a.batch_size}

    # 1. distinct sentences, cold
    distinct = english[: a.distinct]
    f1 = a.work / "distinct.json"
    f1.write_text(json.dumps(distinct))
    cache = a.work / f"cache-{int(time.time())}"
    enc = run("encode", f1, threads, a.batch_size)
    md = run("mdistill", f1, cache, a.batch_size)
    results["distinct"] = {"encode": enc, "mdistill": md, "ratio": enc["wall_s"] / md["wall_s"]}
    print(json.dumps(results["distinct"]), flush=True)

    # 3. warm re-run with +10% new sentences
    more = english[: int(a.distinct * 1.1)]
    f3 = a.work / "warm.json"
    f3.write_text(json.dumps(more))
    warm = run("mdistill", f3, cache, a.batch_size)
    results["warm"] = {"mdistill": warm, "fraction_of_cold": warm["wall_s"] / md["wall_s"]}
    print(json.dumps(results["warm"]), flush=True)

    # 2. four languages: every pair's English side (repeats) vs each distinct English sentence once
    langs = ["de", "fr", "es", "zh_CN"]
    per_lang = [set(pairs.filter(pc.equal(pairs.column("lang"), lang)).column("en").to_pylist()) for lang in langs]
    shared = sorted(set.intersection(*per_lang))
    random.Random(1).shuffle(shared)
    shared = shared[: a.multi]
    pair_en = [e for e in shared for _ in langs]  # one English side per (sentence, language) pair
    f2 = a.work / "pairs_en.json"
    f2.write_text(json.dumps(pair_en))
    enc2 = run("encode", f2, threads, a.batch_size)
    md2 = run("mdistill", f2, a.work / f"cache-multi-{int(time.time())}", a.batch_size)
    results["multi"] = {
        "pairs": len(pair_en),
        "distinct": len(shared),
        "encode": enc2,
        "mdistill": md2,
        "ratio": enc2["wall_s"] / md2["wall_s"],
    }
    print(json.dumps(results["multi"]), flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
