"""Encode speed on one machine, in one run: the teacher, the full student, a compressed student
(layers pruned + vocabulary trimmed) and a static student, on the same sentences.

    python benchmarks/encode_speed.py --n 2000 --out benchmarks/results/encode_speed.json
    python benchmarks/encode_speed.py --static runs/static/model --compressed runs/compress/model   # trained students

Transformers encode with ``SentenceTransformer.encode`` (batch 64, max 128 tokens, fp32, all
cores); the static student with ``model2vec.StaticModel.encode`` (batch 1024, one process).
Reports sentences/s, parameters and on-disk size (safetensors), and each model's speed-up over
the teacher and over the full student. Speed does not depend on the weights' values: a static
student distilled here (not trained) encodes as fast as a trained one.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "libreoffice_de_fr.tsv"


def timed(fn, texts: list[str], repeats: int) -> float:
    fn(texts[:64])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(texts)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    from mdistill.assets import resolve_model
    from mdistill.config import StudentConfig
    from mdistill.models.builder import build_student
    from mdistill.models.static import distil_static
    from mdistill.models.trim_vocab import used_token_ids
    from mdistill.stages.compress import disk_mb

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="sentences per model (the fixture's en/de/fr texts, cycled)")
    ap.add_argument("--teacher", default="all-MiniLM-L6-v2")
    ap.add_argument("--student", default="multilingual-e5-small")
    ap.add_argument("--keep-layers", default="0,6,11", help="the compressed student's layers (configs/compress.yaml's)")
    ap.add_argument("--compressed", type=Path, help="a compressed student (sentence-transformers dir); default: built here, untrained")
    ap.add_argument("--static", type=Path, help="a static student (model2vec dir); default: distilled here from the compressed one")
    ap.add_argument("--cache-dir", type=Path, default=Path("~/.cache/mdistill").expanduser())
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    pairs = pd.read_csv(FIXTURE, sep="\t", keep_default_na=False, quoting=3)
    pool = list(dict.fromkeys([*pairs.en, *pairs.text]))
    texts = [pool[i % len(pool)] for i in range(a.n)]

    teacher = resolve_model(a.teacher, a.cache_dir)
    student = resolve_model(a.student, a.cache_dir)
    compressed = (
        str(a.compressed)
        if a.compressed
        else build_student(
            StudentConfig(model=a.student, keep_layers=[int(x) for x in a.keep_layers.split(",")], trim_vocab=True),
            a.cache_dir,
            used_ids=lambda d, p: used_token_ids(SentenceTransformer(d, device="cpu").tokenizer, [p + t for t in pool]),
            corpus_key="benchmark-fixture",
        )["path"]
    )
    tmp = tempfile.mkdtemp()
    if a.static is None:
        static_dir = Path(tmp) / "static"
        distil_static(compressed).save_pretrained(str(static_dir))
    else:
        static_dir = a.static

    rows = {}
    for name, path in (("teacher", teacher), ("student", student), ("compressed", compressed)):
        m = SentenceTransformer(path, device="cpu")
        m.max_seq_length = 128
        s = timed(lambda x, m=m: m.encode(x, batch_size=64, convert_to_numpy=True), texts, a.repeats)
        rows[name] = {"path": str(path), "params": sum(p.numel() for p in m.parameters()), "disk_mb": disk_mb(path), "seconds": round(s, 2)}
        del m
    sm = StaticModel.from_pretrained(str(static_dir))
    s = timed(lambda x: sm.encode(x, batch_size=1024, use_multiprocessing=False), texts, max(a.repeats, 5))
    rows["static"] = {"path": str(static_dir), "params": int(sm.embedding.size), "disk_mb": disk_mb(static_dir), "seconds": round(s, 4)}
    for r in rows.values():
        r["sentences_per_s"] = round(a.n / r["seconds"], 1)
    for r in rows.values():
        r["x_teacher"] = round(r["sentences_per_s"] / rows["teacher"]["sentences_per_s"], 2)
        r["x_student"] = round(r["sentences_per_s"] / rows["student"]["sentences_per_s"], 2)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "n": a.n,
        "mean_chars": round(float(np.mean([len(t) for t in texts])), 1),
        "models": rows,
    }
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
