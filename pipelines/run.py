"""The end-to-end recipe: ``mdistill run configs/default.yaml``.

corpus -> select train/dev -> teacher (cached) -> per student: build, frozen pass, baselines ->
Ray Train (all students at once) -> evaluate -> export + model card -> report. Read it top to
bottom; every stage is timed in the report.
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

from mdistill.config import RunConfig
from mdistill.encode import default_prompt, load_sentence_transformer
from mdistill.evaluation.metrics import summarize
from mdistill.export import export_student, model_card_info, write_model_card
from mdistill.models.builder import build_student
from mdistill.models.split import TopStudent, lstsq_dense, pad_states
from mdistill.pipelines.corpus import build_corpus
from mdistill.pipelines.evaluate import beats_baselines, evaluate_models
from mdistill.pipelines.teacher import teacher_pass
from mdistill.pipelines.train import fit_all, frozen_states_pass, load_trained, train_student
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
    timings = Timings()
    torch.manual_seed(cfg.seed)
    init_ray(cfg.ray)
    specs = cfg.student_specs()
    single = len(specs) == 1  # one student keeps the short names: model/, untrained, linear_map

    # 1-2. Corpus (cleaned, split by hash of the English sentence) and teacher (cached).
    data = prepare(cfg, timings)
    train, dev, teacher, rows = data["train"], data["dev"], data["teacher"], data["rows"]
    corpus_dir, manifest, corpus_reused, cache_stats = data["corpus_dir"], data["manifest"], data["corpus_reused"], data["cache_stats"]

    # 3. Students: build each (packaged, any HF id or path; layer pruning; vocabulary trimming),
    #    run its frozen bottom once over every sentence (cached), fit the linear-map baseline.
    prepared, trainers = {}, {}
    with timings.stage("student_frozen_pass"):
        for name, scfg, tcfg in specs:
            p = prepare_student(cfg, name, scfg, rows, out / ("student_states" if single else f"student_states/{name}"))
            prepared[name] = {k: p[k] for k in ("st", "prompt", "built", "states_dir", "states_stats", "linear_map")} | {"train": tcfg}
            trainers[name] = train_student(
                name, scfg, tcfg, seed=cfg.seed, student_path=p["built"]["path"], states_dir=p["states_dir"],
                train_rows=p["train_rows"], dense=p["dense"], run_dir=out, concurrent=len(specs),
            )  # fmt: skip

    # 4. Train every student at once on Ray Train (DDP or DeepSpeed ZeRO; gloo on CPU).
    with timings.stage("train"):
        results = fit_all(trainers)

    # 5. Evaluate every model on the dev split, per language: the teacher, and per student the
    #    untrained model, the linear map and the trained student.
    with timings.stage("evaluate"):
        embeddings: dict[str, dict] = {"teacher": teacher}
        baselines = ["teacher"]
        for name, p in prepared.items():
            ckpt = load_trained(results[name])
            top = TopStudent(p["st"], specs_by_name(specs)[name].train_layers, dense=ckpt["dense"])
            top.layers.load_state_dict(ckpt["layers"])
            dv = pq.read_table(p["states_dir"], filters=[("split", "=", "dev")], columns=["text", "hidden", "length", "dim", "pooled"])
            dev_texts = dv.column("text").to_pylist()
            frozen = np.array(embedding_matrix(dv.column("pooled")))  # writable: torch.from_numpy below
            p.update(top=top, ckpt=ckpt, dev_texts=dev_texts, trained=top_embeddings(top, decode_states(dv)))
            untrained, linear = ("untrained", "linear_map") if single else (f"{name}:untrained", f"{name}:linear_map")
            embeddings[untrained] = dict(zip(dev_texts, frozen / np.linalg.norm(frozen, axis=1, keepdims=True)))  # the model normalizes
            embeddings[linear] = dict(zip(dev_texts, p["linear_map"](torch.from_numpy(frozen)).detach().numpy()))
            embeddings[name] = dict(zip(dev_texts, p["trained"]))
            baselines += [untrained, linear]
        table = evaluate_models(dev, embeddings, teacher)

    # 6. Export each student as a sentence-transformers directory, checked against our own forward.
    with timings.stage("export"):
        for name, p in prepared.items():
            model_dir = export_student(
                p["st"],
                p["top"].dense,
                out / ("model" if single else f"models/{name}"),
                prompt=p["prompt"],
                extra={"teacher": cfg.teacher.model, "teacher_fingerprint": cache_stats["fingerprint"], "langs": cfg.corpus.langs},
            )
            check = p["dev_texts"][:100]
            st_out = load_sentence_transformer(str(model_dir), device="cpu").encode(check, batch_size=64, convert_to_numpy=True)
            p["export"] = {
                "path": str(model_dir),
                "checked": len(check),
                "max_abs_diff": float(np.abs(st_out - p["trained"][: len(check)]).max()),
            }

    students = {
        name: {
            "model": p["built"]["path"],
            "built_from": p["built"]["steps"],
            "params": sum(x.numel() for x in p["st"].parameters())
            + (sum(x.numel() for x in p["top"].dense.parameters()) if p["top"].dense is not None else 0),
            "layers": len(p["st"][0].auto_model.encoder.layer),
            "train_layers": specs_by_name(specs)[name].train_layers,
            "projection": specs_by_name(specs)[name].projection,
            "strategy": strategy_label(p["train"]),
            "loss": p["train"].loss,
            "history": p["ckpt"]["logs"]["history"],
            "steps": p["ckpt"]["logs"]["steps"],
            "dev": [
                {k.removeprefix("dev_"): v for k, v in d.items()} for d in p["ckpt"]["logs"]["dev"]
            ],  # step, teacher_space_top1, mse100
            "resumed_at": p["ckpt"]["logs"].get("resumed_at", []),
            "states_cache": p["states_stats"],
            "export": p["export"],
        }
        for name, p in prepared.items()
    }
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
            "student_rows": rows.num_rows,
        },
        "teacher_cache": cache_stats,
        "students": students,
        "metrics": table,
        "baselines": baselines,
        "summary": summarize(table),
        "beats_baselines": {
            name: beats_baselines(table, model=name, baselines=["teacher", *(b for b in baselines if b.startswith(f"{name}:") or single)])
            for name in students
        },
    }
    for name, s in students.items():
        write_model_card(s["export"]["path"], model_card_info(report, name))
    write_report(out, report)
    print((out / "report.md").read_text(), flush=True)
    return report


def prepare(cfg: RunConfig, timings: Timings) -> dict:
    """Stages 1-2 (timed as ``corpus`` and ``teacher``): the corpus, the train/dev pairs, the
    teacher's vectors (through the Parquet cache) and one student row per sentence to learn."""
    cache_dir = cfg.cache_path
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
    return dict(
        corpus_dir=corpus_dir,
        manifest=manifest,
        corpus_reused=corpus_reused,
        train=train,
        dev=dev,
        teacher=teacher,
        cache_stats=cache_stats,
        rows=student_rows(train, dev, teacher),
    )


def prepare_student(cfg: RunConfig, name: str, scfg, rows: pa.Table, states_dir) -> dict:
    """Stage 3 for one student: build it, run its frozen bottom once over every sentence (cached)
    into ``states_dir``, fit the linear-map baseline and the Dense head it starts from."""
    cache_dir = cfg.cache_path
    built = build_student(scfg, cache_dir, corpus_texts=rows.column("text").to_pylist())
    st = load_sentence_transformer(built["path"], device="cpu", max_seq_length=scfg.max_seq_length)
    prompt = default_prompt(st) if scfg.prompt is None else scfg.prompt
    states_dir, states_stats = frozen_states_pass(scfg, cfg.eval.batch_size, built["path"], rows, prompt, cache_dir, states_dir)
    print(f"[mdistill] {name}: states cache {states_stats['cache_hits']} hits, {states_stats['computed']} computed", flush=True)

    # Baselines from the frozen pass: the untrained student and the least-squares linear map.
    meta = pq.read_table(states_dir, columns=["split", "target", "pooled"])
    tr = meta.filter(pc.equal(meta.column("split"), "train"))
    pooled, targets = embedding_matrix(tr.column("pooled")), embedding_matrix(tr.column("target"))
    if scfg.projection == "none" and pooled.shape[1] != targets.shape[1]:
        raise ValueError(
            f"{name}: student.projection=none needs equal dimensions, but the student has {pooled.shape[1]} and the teacher {targets.shape[1]}"
        )
    return dict(
        st=st,
        prompt=prompt,
        built=built,
        states_dir=states_dir,
        states_stats=states_stats,
        linear_map=lstsq_dense(pooled, targets),
        dense=initial_head(scfg, pooled, targets),  # the trained student's head starts at (a well-conditioned) linear map
        train_rows=tr.num_rows,
    )


def initial_head(student, pooled: np.ndarray, targets: np.ndarray) -> torch.nn.Linear | None:
    """The Dense head the student starts with (``student.projection``)."""
    if student.projection == "lstsq":
        return lstsq_dense(pooled, targets, ridge=student.head_ridge)
    if student.projection == "random":
        return torch.nn.Linear(pooled.shape[1], targets.shape[1])
    return None


def specs_by_name(specs) -> dict:
    return {name: scfg for name, scfg, _ in specs}


def strategy_label(t) -> str:
    return "ddp" if t.strategy == "ddp" else f"deepspeed-zero{t.zero_stage}"
