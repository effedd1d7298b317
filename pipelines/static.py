"""The static-student recipe: ``mdistill run configs/static.yaml``.

corpus -> selection -> teacher (cached) -> source transformer (the `student:` section built, or
``static.from_model``) -> Model2Vec distillation + corpus SIF weights -> training rows (joined on
Ray Data: every English source and translation with the teacher vector of its English) -> a
least-squares map to the teacher's space folded into the token vectors -> Ray Train (DDP) ->
evaluate on the dev (in-domain) and held-out (out-of-domain) samples beside the teacher, the
untrained static model, its linear map and the source transformer -> export (model2vec format,
checked in model2vec and sentence-transformers) + model card -> report.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch
from ray.data.expressions import col
from ray.train.torch import TorchTrainer

from mdistill.evaluation.table import beats_baselines, metrics_table, summarize
from mdistill.export import model_card_info, write_model_card
from mdistill.ray_init import init_ray
from mdistill.report import Timings, write_report
from mdistill.report.markdown import render_markdown
from mdistill.report.schema import RunReport, StudentReport
from mdistill.stages import cache_pass, static, train
from mdistill.stages.corpus import build_corpus
from mdistill.stages.evaluate import teacher_dev_vectors
from mdistill.stages.select import select_data
from mdistill.stages.teacher import open_teacher
from mdistill.storage import check_shared
from mdistill.tracking import RunTracker
from mdistill.training.static_loop import StaticLoopConfig, static_loop_per_worker

NAME = "static"


def run(cfg) -> RunReport:
    t_start, timings, out = time.time(), Timings(), cfg.output_path
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tracker = RunTracker(cfg, timings, recipe="static")  # tracking: MLflow run / TensorBoard folder (off unless set)
    init_ray(cfg.ray)
    check_shared({"cache_dir": cfg.cache_path, "output_dir": out} | cfg.tracking.shared_folders())

    # 1. Corpus and the selection (as the embedding recipe).
    with timings.stage("corpus"):
        corpus = build_corpus(cfg.corpus, cfg.cache_path)
        data = select_data(corpus, cfg.corpus.langs, cfg.eval.max_dev_per_lang, cfg.eval.max_heldout_per_lang)

    # 2. Teacher: every English source and evaluation translation, once, into the cache.
    with timings.stage("teacher"):
        sentences = cache_pass.Distinct(data.sentences(), data.counts.student_rows, flag="teacher")
        teacher = open_teacher(cfg.teacher, cfg.cache_path)
        with teacher.cache.lock():
            todo = cache_pass.plan(teacher.cache, lambda: sentences().filter(expr=col("teacher")), data.fingerprint)
            vectors = todo.rows.map_batches(teacher.predictor, **teacher.pool_args(ray.nodes())) if todo.rows else None
            teacher_pass = cache_pass.commit(todo, vectors)

    # 3. The static model training starts from: the source transformer's token vectors, SIF
    #    weights from the training sentences' token counts.
    with timings.stage("distil"):
        source = static.source_model(cfg, data)
        init = static.build_static(cfg.static, source, data, out / "static")

    # 4. The training rows (every English source and translation with the teacher vector of its
    #    English), a linear map from the distilled space to the teacher's folded into the token
    #    vectors, then Ray Train: the static model fitted to the teacher vectors (DDP over gloo).
    rows, n_rows = static.training_rows(data, teacher.cache)
    with timings.stage("linear_map"):
        start = static.fit_map(init, rows, cfg.static.map_ridge, out / "static") if cfg.static.map_ridge is not None else init
    with timings.stage("train"):
        storage = out / "ray_train"
        scaling, threads = train.scaling(cfg.train)
        loop = StaticLoopConfig(
            init_path=str(start.path), train_rows=n_rows, threads=threads, seed=cfg.seed, train=cfg.train,
            tracking=tracker.training(NAME, child=False),
        )  # fmt: skip
        static.fresh_or_resume(storage / NAME, loop, teacher_pass.fingerprint)
        result = TorchTrainer(
            static_loop_per_worker,
            train_loop_config={"loop": loop.model_dump()},
            scaling_config=scaling,
            datasets={"train": rows},
            dataset_config=train.data_config(),
            run_config=train.run_config(NAME, storage, cfg.train),
        ).fit()
        trained = train.load_trained(result)
        model_dir = static.trained_model(result.checkpoint, out / "static" / "trained")

    # 5. Evaluate per language on the dev (in-domain) and held-out (out-of-domain) samples.
    with timings.stage("evaluate"):
        texts = static.eval_texts(data)
        teacher_vecs = teacher_dev_vectors(pa.concat_tables([data.dev, data.heldout]), teacher.cache)
        ours = static.static_vectors(model_dir, texts)
        vectors_by_model = {"teacher": teacher_vecs, "untrained": static.static_vectors(init.path, texts), NAME: ours}
        if start is not init:
            vectors_by_model["linear_map"] = static.static_vectors(start.path, texts)
        if cfg.static.baseline_source:
            vectors_by_model["source_transformer"] = ray.get(static.transformer_vectors.remote(init.source, texts, cfg.eval.batch_size))
        baselines = [m for m in vectors_by_model if m != NAME]
        table = metrics_table(data.dev, vectors_by_model, teacher_vecs)
        heldout_table = metrics_table(data.heldout, vectors_by_model, teacher_vecs) if data.heldout.num_rows else {}

    # 6. Export (model2vec format), checked in model2vec and sentence-transformers against the
    #    vectors just evaluated.
    with timings.stage("export"):
        check, params = static.export_static(model_dir, out / "model", ours)

    student = StudentReport(
        model=init.source, built_from=start.steps, params=params, layers=0, train_layers="all", projection="none",
        strategy="ddp", loss=cfg.train.loss, logs=trained.logs, states_cache=None, training_set=f"{data.fingerprint}-{teacher_pass.fingerprint}", export=check,
    )  # fmt: skip
    report = RunReport.of_run(
        cfg.model_dump(mode="json"),
        t_start,
        timings,
        corpus,
        corpus_reused=corpus.reused,
        data=data.counts,
        teacher_cache=teacher_pass,
        students={NAME: student},
        metrics=table,
        baselines=baselines,
        summary=summarize(table),
        beats_baselines={NAME: beats_baselines(table, NAME, baselines)},
        heldout_metrics=heldout_table,
        heldout_summary=summarize(heldout_table) if heldout_table else {},
        heldout_beats_baselines={NAME: beats_baselines(heldout_table, NAME, baselines)} if heldout_table else {},
    )
    write_model_card(check.path, model_card_info(report, NAME))
    write_report(out, report)
    tracker.finish(report)
    print(render_markdown(report), flush=True)
    return report
