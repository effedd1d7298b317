"""The end-to-end recipe: ``mdistill run configs/default.yaml``.

corpus -> select train/dev -> teacher (cached) -> frozen student pass -> baselines -> Ray Train
-> evaluate -> export -> report. Read it top to bottom; every stage is timed in the report.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
from ray.data.expressions import col

from mdistill.assets import resolve_model
from mdistill.config import RunConfig
from mdistill.encode import default_prompt, load_sentence_transformer
from mdistill.export import export_student
from mdistill.models.split import TopStudent, lstsq_dense, pad_states
from mdistill.pipelines.corpus import build_corpus
from mdistill.pipelines.evaluate import beats_baselines, evaluate_models
from mdistill.pipelines.teacher import teacher_pass
from mdistill.pipelines.train import frozen_states_pass, train_student
from mdistill.ray_init import init_ray
from mdistill.report import Timings, write_report
from mdistill.teacher.cache import embedding_matrix, embeddings_table
from mdistill.training.step import decode_states


def select_pairs(cfg: RunConfig, pairs_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kept pairs of the train and dev splits, one translation per (English, language)."""
    wanted = col("split").is_in(["train", "dev"]) & col("lang").is_in(cfg.corpus.langs)
    pairs = ray.data.read_parquet(str(pairs_dir), columns=["en", "lang", "text", "split"]).filter(expr=wanted).to_pandas()
    pairs = pairs.sort_values(["split", "lang", "en", "text"]).drop_duplicates(["en", "lang"]).reset_index(drop=True)
    train, dev = pairs[pairs.split == "train"], pairs[pairs.split == "dev"]
    if cfg.eval.max_dev_per_lang:
        dev = dev.groupby("lang", group_keys=False).head(cfg.eval.max_dev_per_lang)
    if train.empty or dev.empty:
        raise RuntimeError(f"no {'training' if train.empty else 'dev'} pairs after cleaning and splitting; see the corpus manifest")
    return train.reset_index(drop=True), dev.reset_index(drop=True)


def student_rows(train: pd.DataFrame, dev: pd.DataFrame, teacher: dict[str, np.ndarray]) -> pa.Table:
    """One row per sentence the student must see: each English source once, each translation once;
    the target of both is the teacher's vector of the English source (Reimers & Gurevych)."""
    rows = []
    for split, df in (("train", train), ("dev", dev)):
        for en in dict.fromkeys(df["en"]):
            rows.append((en, "en", en, split))
        rows += [(t, lang, en, split) for t, lang, en in zip(df["text"], df["lang"], df["en"])]
    text, lang, en, split = (list(c) for c in zip(*rows))
    target = embeddings_table(en, np.stack([teacher[e] for e in en])).column("embedding")
    return pa.table({"text": text, "lang": lang, "en": en, "split": split, "target": target})


@torch.inference_mode()
def top_embeddings(top: TopStudent, states: list[np.ndarray], batch_size: int = 128) -> np.ndarray:
    top.eval()
    order = np.argsort([s.shape[0] for s in states], kind="stable")
    out = np.empty((len(states), top.dense.out_features if top.dense is not None else states[0].shape[1]), np.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        out[idx] = top(*pad_states([states[i] for i in idx])).numpy()
    return out


def run(cfg: RunConfig) -> dict:
    t_start = time.time()
    out = cfg.output_path
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cfg.cache_path
    timings = Timings()
    torch.manual_seed(cfg.seed)
    init_ray(cfg.ray)

    # 1. Corpus: real parallel text, cleaned, split by hash of the English sentence.
    with timings.stage("corpus"):
        corpus_dir, manifest, corpus_reused = build_corpus(cfg.corpus, cache_dir)
        train, dev = select_pairs(cfg, corpus_dir / "pairs")
    print(f"[mdistill] train pairs {len(train)} ({train.en.nunique()} English), dev pairs {len(dev)}", flush=True)

    # 2. Teacher: every distinct English source (and the dev translations, for the teacher-alone baseline).
    with timings.stage("teacher"):
        texts = list(dict.fromkeys([*train.en, *dev.en, *dev.text]))
        cache, cache_stats = teacher_pass(cfg.teacher, texts, cache_dir)
        teacher = dict(zip(texts, cache.lookup(texts)))
    print(f"[mdistill] teacher cache: {cache_stats['cache_hits']} hits, {cache_stats['computed']} computed", flush=True)

    # 3. Student: the packaged multilingual model (or any HF model), its bottom run once and cached.
    with timings.stage("student_frozen_pass"):
        student_path = resolve_model(cfg.student.model, cache_dir)
        st = load_sentence_transformer(student_path, device="cpu", max_seq_length=cfg.student.max_seq_length)
        prompt = default_prompt(st) if cfg.student.prompt is None else cfg.student.prompt
        states_dir, states_stats = frozen_states_pass(
            cfg, student_path, student_rows(train, dev, teacher), prompt, cache_dir, out / "student_states"
        )
    print(f"[mdistill] student states cache: {states_stats['cache_hits']} hits, {states_stats['computed']} computed", flush=True)

    # 4. Baselines from the frozen pass: the untrained student and the least-squares linear map.
    meta = pq.read_table(states_dir, columns=["text", "lang", "en", "split", "target", "pooled"])
    tr = meta.filter(pc.equal(meta.column("split"), "train"))
    pooled, targets = embedding_matrix(tr.column("pooled")), embedding_matrix(tr.column("target"))
    if cfg.student.projection == "none" and pooled.shape[1] != targets.shape[1]:
        raise ValueError(
            f"student.projection=none needs equal dimensions, but the student has {pooled.shape[1]} and the teacher {targets.shape[1]}"
        )
    linear_map = lstsq_dense(pooled, targets)
    # The trained student's Dense head starts at (a well-conditioned version of) the linear map.
    dense = {
        "lstsq": lambda: lstsq_dense(pooled, targets, ridge=cfg.student.head_ridge),
        "random": lambda: torch.nn.Linear(pooled.shape[1], targets.shape[1]),
        "none": lambda: None,
    }[cfg.student.projection]()

    # 5. Train the student's top on Ray Train (2 workers, gloo on CPU).
    with timings.stage("train"):
        result = train_student(cfg, student_path, states_dir, tr.num_rows, dense, out)
        with result.checkpoint.as_directory() as d:
            ckpt = torch.load(f"{d}/top_student.pt", weights_only=False)
        top = TopStudent(st, cfg.student.train_layers, dense=ckpt["dense"])
        top.layers.load_state_dict(ckpt["layers"])

    # 6. Evaluate every model on the dev split, per language.
    with timings.stage("evaluate"):
        dv = pq.read_table(states_dir, filters=[("split", "=", "dev")], columns=["text", "hidden", "length", "dim", "pooled"])
        dev_texts = dv.column("text").to_pylist()
        frozen = embedding_matrix(dv.column("pooled"))
        trained = top_embeddings(top, decode_states(dv))
        embeddings = {
            "teacher": teacher,
            "untrained": dict(zip(dev_texts, frozen / np.linalg.norm(frozen, axis=1, keepdims=True))),  # the model normalizes
            "linear_map": dict(zip(dev_texts, linear_map(torch.from_numpy(frozen)).detach().numpy())),
            "student": dict(zip(dev_texts, trained)),
        }
        table = evaluate_models(dev, embeddings, teacher)

    # 7. Export a sentence-transformers directory and check it against our own forward.
    with timings.stage("export"):
        model_dir = export_student(
            st,
            top.dense,
            out / "model",
            prompt=prompt,
            extra={"teacher": cfg.teacher.model, "teacher_fingerprint": cache_stats["fingerprint"], "langs": cfg.corpus.langs},
        )
        check = dev_texts[:100]
        st_out = load_sentence_transformer(str(model_dir), device="cpu").encode(check, batch_size=64, convert_to_numpy=True)
        max_diff = float(np.abs(st_out - trained[: len(check)]).max())

    report = {
        "config": cfg.model_dump(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_s": round(time.time() - t_start, 1),
        "timings_s": dict(timings),
        "corpus": {k: v for k, v in manifest.items() if k != "files"},  # per file: <corpus_dir>/manifest.json
        "corpus_dir": str(corpus_dir),
        "corpus_reused": corpus_reused,
        "data": {
            "train_pairs": train.groupby("lang").size().to_dict(),
            "train_english": int(train.en.nunique()),
            "dev_pairs": dev.groupby("lang").size().to_dict(),
            "student_rows": meta.num_rows,
        },
        "teacher_cache": cache_stats,
        "student_states_cache": states_stats,
        "train": {"history": ckpt["history"], "train_layers": cfg.student.train_layers, "projection": cfg.student.projection},
        "metrics": table,
        "beats_baselines": beats_baselines(table),
        "export": {"path": str(model_dir), "checked": len(check), "max_abs_diff": max_diff},
    }
    write_report(out, report)
    print((out / "report.md").read_text(), flush=True)
    return report
