"""The compression recipe: ``mdistill run configs/compress.yaml``.

corpus -> selection -> teacher (a multilingual model, cached, labelling every English source and
every translation) -> the student built from it (layers kept, vocabulary trimmed) and its
untrained pass (cached) -> training set (joined on Ray Data; target (1 − w) · teacher(en) +
w · teacher(text)) -> Ray Train (the whole student; with intermediate-layer losses the teacher runs
in the loop) -> evaluate on the dev (in-domain) and held-out (out-of-domain) samples in the
teacher's own space beside the teacher, the untrained student and its linear map -> size and
encode speed of teacher and student -> export + model card -> report.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch
from ray.data.expressions import col
from ray.train.torch import TorchTrainer

from mdistill.config import RunConfig
from mdistill.evaluation.table import beats_baselines, metrics_table, summarize
from mdistill.export import model_card_info, write_model_card
from mdistill.ray_init import init_ray
from mdistill.report import Timings, write_report
from mdistill.report.markdown import render_markdown
from mdistill.report.schema import RunReport, StudentReport
from mdistill.stages import cache_pass, compress, student, train
from mdistill.stages.corpus import build_corpus
from mdistill.stages.evaluate import student_dev_vectors, teacher_dev_vectors
from mdistill.stages.export import export
from mdistill.stages.select import select_data
from mdistill.stages.teacher import open_teacher
from mdistill.storage import check_shared
from mdistill.tracking import RunTracker
from mdistill.training.loop import train_loop_per_worker

NAME = "student"


def run(cfg: RunConfig) -> RunReport:
    t_start, timings, out = time.time(), Timings(), cfg.output_path
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tracker = RunTracker(cfg, timings, recipe="compress")  # tracking: MLflow run / TensorBoard folder (off unless set)
    init_ray(cfg.ray)
    check_shared({"cache_dir": cfg.cache_path, "output_dir": out} | cfg.tracking.shared_folders())
    c = cfg.compress

    # 1. Corpus and the selection (as the embedding recipe).
    with timings.stage("corpus"):
        corpus = build_corpus(cfg.corpus, cfg.cache_path)
        data = select_data(corpus, cfg.corpus.langs, cfg.eval.max_dev_per_lang, cfg.eval.max_heldout_per_lang)

    # 2. Teacher: every text once, a multilingual teacher labelling each side (with self_weight 0
    #    only the English sources and the evaluation translations are targets, as in the embedding recipe).
    with timings.stage("teacher"):
        sentences = cache_pass.Distinct(data.sentences(), data.counts.student_rows, flag="teacher")
        labelled = sentences if c.self_weight else lambda: sentences().filter(expr=col("teacher"))
        teacher = open_teacher(cfg.teacher, cfg.cache_path)
        with teacher.cache.lock():
            todo = cache_pass.plan(teacher.cache, labelled, data.fingerprint)
            vectors = todo.rows.map_batches(teacher.predictor, **teacher.pool_args(ray.nodes())) if todo.rows else None
            teacher_pass = cache_pass.commit(todo, vectors)

    # 3. The student (the teacher's layers kept, vocabulary trimmed), its untrained pass over every
    #    text (the untrained baseline), the training set and the linear-map baseline.
    with timings.stage("student_frozen_pass"):
        s = student.build(NAME, cfg.student, cfg.cache_path, data, batch_size=cfg.eval.batch_size)
        ts, states_pass = student.find_training_set(data, teacher.cache, s, cfg.cache_path, c.self_weight), None
        if ts is None:
            with s.cache.lock():
                todo = cache_pass.plan(s.cache, sentences, data.fingerprint)
                states = todo.rows.map_batches(s.predictor, **s.pool_args(ray.nodes())) if todo.rows else None
                states_pass = cache_pass.commit(todo, states, commit_rows=1024)
            ts = student.prepare_training_set(data, teacher.cache, s, cfg.cache_path, c.self_weight)
        maps = student.fit_linear_maps(ts, cfg.student, NAME)

    # 4. Ray Train (DDP or DeepSpeed ZeRO; with intermediate-layer losses each worker also holds the teacher).
    with timings.stage("train"):
        storage = out / "ray_train"
        scaling, threads = train.scaling(cfg.train)
        loop = train.loop_config(
            s, ts, cfg.train, seed=cfg.seed, head_path=None, threads=threads, tracking=tracker.training(NAME, child=False)
        )
        loop = loop.model_copy(update={"intermediate": compress.intermediate_spec(c, teacher.model_dir, s.path)})
        train.fresh_or_resume(storage / NAME, loop, ts)
        result = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"loop": loop.model_dump()},
            scaling_config=scaling,
            datasets={"train": ts.train()},
            dataset_config=train.data_config(),
            run_config=train.run_config(NAME, storage, cfg.train),
        ).fit()
        trained = train.load_trained(result)

    # 5. Evaluate per language in the teacher's own space, dev (in-domain) and held-out (out-of-domain).
    with timings.stage("evaluate"):
        teacher_vecs = teacher_dev_vectors(pa.concat_tables([data.dev, data.heldout]), teacher.cache)
        vectors_by_model = {"teacher": teacher_vecs, **student_dev_vectors(ts, maps, trained)}
        vectors_by_model[NAME] = vectors_by_model.pop("student")
        baselines = [m for m in vectors_by_model if m != NAME]
        beaten = [b for b in baselines if b != "teacher"]  # the teacher is the reference: the student keeps a share of it
        table = metrics_table(data.dev, vectors_by_model, teacher_vecs)
        heldout_table = metrics_table(data.heldout, vectors_by_model, teacher_vecs) if data.heldout.num_rows else {}

    # 6. Export (a sentence-transformers directory, checked against the vectors just evaluated),
    #    then teacher and student encode the same dev sentences for the size and speed columns.
    with timings.stage("export"):
        extra = {"teacher": cfg.teacher.model, "teacher_fingerprint": teacher_pass.fingerprint, "langs": cfg.corpus.langs}
        check, params = ray.get(ray.remote(export).remote(s, trained, ts, out / "model", extra=extra))
    with timings.stage("speed"):
        texts = (data.dev.column("text").to_pylist() * c.speed_sentences)[: c.speed_sentences]
        speed = ray.get(
            compress.encode_speed.remote(
                {"teacher": teacher.model_dir, NAME: check.path},
                texts,
                batch_size=cfg.eval.batch_size,
                max_seq_length=cfg.student.max_seq_length,
            )
        )

    strategy = "ddp" if cfg.train.strategy == "ddp" else f"deepspeed-zero{cfg.train.zero_stage}"
    loss = "+".join([cfg.train.loss, *(["hidden"] if c.hidden_weight else []), *(["attention_relation"] if c.attention_weight else [])])
    report = RunReport.of_run(
        cfg.model_dump(mode="json"),
        t_start,
        timings,
        corpus,
        corpus_reused=corpus.reused,
        data=data.counts,
        teacher_cache=teacher_pass,
        students={
            NAME: StudentReport(
                model=s.path,
                built_from=s.steps,
                params=params,
                layers=s.layers,
                train_layers=s.config.train_layers,
                projection=s.config.projection,
                strategy=strategy,
                loss=loss,
                logs=trained.logs,
                states_cache=states_pass,
                training_set=ts.fingerprint,
                export=check,
            )  # fmt: skip
        },
        metrics=table,
        baselines=baselines,
        summary=summarize(table),
        beats_baselines={NAME: beats_baselines(table, NAME, beaten)},
        heldout_metrics=heldout_table,
        heldout_summary=summarize(heldout_table) if heldout_table else {},
        heldout_beats_baselines={NAME: beats_baselines(heldout_table, NAME, beaten)} if heldout_table else {},
        speed=speed,
    )
    write_model_card(check.path, model_card_info(report, NAME))
    write_report(out, report)
    tracker.finish(report)
    print(render_markdown(report), flush=True)
    return report
