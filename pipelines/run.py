"""The end-to-end recipe: ``mdistill run configs/default.yaml``.

corpus -> selection -> teacher (cached) -> per student: build, frozen pass (cached), training set
(joined on Ray Data), linear maps -> Ray Train (every student at once) -> evaluate -> export +
model card -> report. Read it top to bottom; every stage is timed in the report. The driver
holds the config, the dev sample and vectors; the corpus, the rows and the states stream through
Ray Data and the training workers.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import pyarrow as pa
import ray
import torch
from ray.data.expressions import col
from ray.train.torch import TorchTrainer

from mdistill.config import RunConfig, TrainConfig
from mdistill.evaluation.table import beats_baselines, metrics_table, summarize
from mdistill.export import model_card_info, write_model_card
from mdistill.ray_init import init_ray
from mdistill.report import Timings, write_report
from mdistill.report.markdown import render_markdown
from mdistill.report.schema import CachePass, RunReport, StudentReport
from mdistill.stages import cache_pass, student, train
from mdistill.stages.corpus import build_corpus
from mdistill.stages.evaluate import student_dev_vectors, teacher_dev_vectors
from mdistill.stages.export import export
from mdistill.stages.select import select_data
from mdistill.stages.teacher import open_teacher
from mdistill.storage import check_shared
from mdistill.tracking import RunTracker
from mdistill.training.loop import train_loop_per_worker


class Prepared(NamedTuple):
    student: student.Student
    training_set: student.TrainingSet
    maps: student.LinearMaps
    states_pass: CachePass | None  # None: the training set was reused, no frozen pass ran
    train: TrainConfig


def run(cfg: RunConfig) -> RunReport:
    t_start, timings, out = time.time(), Timings(), cfg.output_path
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tracker = RunTracker(cfg, timings, recipe="run")  # tracking: MLflow run / TensorBoard folder (off unless set)
    init_ray(cfg.ray)
    check_shared({"cache_dir": cfg.cache_path, "output_dir": out} | cfg.tracking.shared_folders())  # several nodes: every one must see them
    specs = cfg.student_specs()
    single = len(specs) == 1  # one student keeps the short names: model/, untrained, linear_map

    # 1. Corpus (read, cleaned, deduplicated, split by hash of the English sentence) and the selection.
    with timings.stage("corpus"):
        corpus = build_corpus(cfg.corpus, cfg.cache_path)
        data = select_data(corpus, cfg.corpus.langs, cfg.eval.max_dev_per_lang, cfg.eval.max_heldout_per_lang)

    # 2. Teacher: every English source and dev translation, once, on an actor pool, into the cache.
    with timings.stage("teacher"):
        sentences = cache_pass.Distinct(
            data.sentences(), data.counts.student_rows, flag="teacher"
        )  # every text once, the teacher's flagged
        teacher = open_teacher(cfg.teacher, cfg.cache_path)
        with teacher.cache.lock():
            todo = cache_pass.plan(teacher.cache, lambda: sentences().filter(expr=col("teacher")), data.fingerprint)
            vectors = todo.rows.map_batches(teacher.predictor, **teacher.pool_args(ray.nodes())) if todo.rows else None
            teacher_pass = cache_pass.commit(todo, vectors)

    # 3. Students: build each, run its frozen part once over every sentence (cached), join its
    #    training set, fit the linear maps (the baseline, and where its Dense head starts).
    prepared, trainers = {}, {}
    with timings.stage("student_frozen_pass"):
        for name, scfg, tcfg in specs:
            s = student.build(name, scfg, cfg.cache_path, data, batch_size=cfg.eval.batch_size)
            ts, states_pass = student.find_training_set(data, teacher.cache, s, cfg.cache_path), None  # joined by an earlier run?
            if ts is None:
                with s.cache.lock():
                    todo = cache_pass.plan(s.cache, sentences, data.fingerprint)
                    states = todo.rows.map_batches(s.predictor, **s.pool_args(ray.nodes())) if todo.rows else None
                    states_pass = cache_pass.commit(todo, states, commit_rows=1024)  # ~50 KB of states a row
                ts = student.prepare_training_set(data, teacher.cache, s, cfg.cache_path)
            maps = student.fit_linear_maps(ts, scfg, name)

            # 4. One TorchTrainer per student (DDP or DeepSpeed ZeRO; gloo on CPU, nccl on GPU).
            storage = out / "ray_train"
            scaling, threads = train.scaling(tcfg, concurrent=len(specs))
            loop = train.loop_config(
                s, ts, tcfg, seed=cfg.seed, head_path=train.save_head(storage, name, maps.head), threads=threads,
                tracking=tracker.training(name, child=not single, params={"student": scfg, "train": tcfg}),
            )  # fmt: skip
            train.fresh_or_resume(storage / name, loop, ts)
            trainers[name] = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"loop": loop.model_dump()},
                scaling_config=scaling,
                datasets={"train": ts.train()},
                dataset_config=train.data_config(),
                run_config=train.run_config(name, storage, tcfg),
            )
            prepared[name] = Prepared(s, ts, maps, states_pass, tcfg)

    with timings.stage("train"):
        results = train.fit_all(trainers)

    # 5. Evaluate on the dev sample (in-domain) and the held-out sample (out-of-domain), per
    #    language: the teacher alone, and per student the untrained model, the linear map and the
    #    trained student.
    with timings.stage("evaluate"):
        teacher_vecs = teacher_dev_vectors(pa.concat_tables([data.dev, data.heldout]), teacher.cache)
        vectors_by_model, baselines, trained = {"teacher": teacher_vecs}, ["teacher"], {}
        for name, p in prepared.items():
            trained[name] = train.load_trained(results[name])
            for model, vecs in student_dev_vectors(p.training_set, p.maps, trained[name]).items():
                label = name if model == "student" else (model if single else f"{name}:{model}")
                vectors_by_model[label] = vecs
                baselines += [] if model == "student" else [label]
        table = metrics_table(data.dev, vectors_by_model, teacher_vecs)
        heldout_table = metrics_table(data.heldout, vectors_by_model, teacher_vecs) if data.heldout.num_rows else {}

    # 6. Export each student as a sentence-transformers directory, checked against our own vectors
    #    (in a Ray task: building the model twice is the biggest allocation of the run).
    students = {}
    with timings.stage("export"):
        extra = {"teacher": cfg.teacher.model, "teacher_fingerprint": teacher_pass.fingerprint, "langs": cfg.corpus.langs}
        exports = {
            name: ray.remote(export).remote(
                p.student, trained[name], p.training_set, out / ("model" if single else f"models/{name}"), extra=extra
            )
            for name, p in prepared.items()
        }
        for name, p in prepared.items():
            s, t = p.student, p.train
            check, params = ray.get(exports[name])
            students[name] = StudentReport(
                model=s.path, built_from=s.steps, params=params, layers=s.layers, train_layers=s.config.train_layers,
                projection=s.config.projection, strategy="ddp" if t.strategy == "ddp" else f"deepspeed-zero{t.zero_stage}",
                loss=t.loss, logs=trained[name].logs, states_cache=p.states_pass, training_set=p.training_set.fingerprint, export=check,
            )  # fmt: skip

    own = {name: [b for b in baselines if b == "teacher" or single or b.startswith(f"{name}:")] for name in students}
    report = RunReport.of_run(
        cfg.model_dump(mode="json"),
        t_start,
        timings,
        corpus,
        corpus_reused=corpus.reused,
        data=data.counts,
        teacher_cache=teacher_pass,
        students=students,
        metrics=table,
        baselines=baselines,
        summary=summarize(table),
        beats_baselines={name: beats_baselines(table, name, own[name]) for name in students},
        heldout_metrics=heldout_table,
        heldout_summary=summarize(heldout_table) if heldout_table else {},
        heldout_beats_baselines={name: beats_baselines(heldout_table, name, own[name]) for name in students} if heldout_table else {},
    )
    for name, s in students.items():
        write_model_card(s.export.path, model_card_info(report, name))
    write_report(out, report)
    tracker.finish(report)  # the tables, the report and the exported model(s)
    print(render_markdown(report), flush=True)
    return report
