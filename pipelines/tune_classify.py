"""Hyper-parameter search of logit distillation: ``mdistill tune`` on a config with ``classify:``.

corpus -> task -> teacher (trained or loaded) -> teacher logits (cached) -> Ray Tune: every trial
trains the ``soft`` student (``train.temperature``, ``train.alpha``, ``train.lr``, ... sampled) on
Ray Train, reporting the pooled dev accuracy of every language ``tune.reports`` times; ASHA stops
the weak ones -> results table, ``best_config.yaml``, report. The test files are never looked at.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import ray
import torch
from ray import tune
from ray.train.torch import TorchTrainer

from mdistill.assets import resolve_model
from mdistill.config import RunConfig
from mdistill.export import classifier_card
from mdistill.log import get_logger
from mdistill.ray_init import init_ray
from mdistill.report import Timings, write_report
from mdistill.report.schema import DataCounts, RunReport
from mdistill.resources import concurrent_trainers
from mdistill.stages import cache_pass, classify, train
from mdistill.stages.classify_data import select_task
from mdistill.stages.corpus import build_corpus
from mdistill.stages.teacher import open_teacher
from mdistill.stages.tune import (
    STARTS_FILE,
    TRIAL_RESOURCES,
    DevReportCallback,
    fresh_or_restore,
    results_markdown,
    search_results,
    tune_config,
)
from mdistill.storage import check_shared
from mdistill.tracking import RunTracker
from mdistill.tracking.tune import trial_callbacks
from mdistill.training.classify_loop import classify_loop_per_worker
from mdistill.tune_space import dev_every, search_space, trial_config

log = get_logger("tune")


def tune_classify(cfg: RunConfig) -> RunReport:
    t_start, timings, out, tc = time.time(), Timings(), cfg.output_path, cfg.tune
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    base, c = cfg.model_dump(mode="json"), cfg.classify
    experiment = out / "tune" / cfg.name
    fresh_or_restore(experiment, base)  # an interrupted search with the same settings resumes
    restoring = tune.Tuner.can_restore(str(experiment))
    # tracking: the search's MLflow run (a restored search continues its own: its trials' callbacks name it)
    tracker = RunTracker(cfg, timings, recipe="tune", run_file=experiment.parent / f"{cfg.name}.mlflow_run", resume=restoring)
    init_ray(cfg.ray)
    check_shared({"cache_dir": cfg.cache_path, "output_dir": out} | cfg.tracking.shared_folders())

    # 1-3. Task, teacher and its logits, once for every trial.
    with timings.stage("corpus"):
        corpus = build_corpus(cfg.corpus, cfg.cache_path)
        task = select_task(corpus, cfg.corpus.langs, c.max_train_english, c.max_eval_english, c.labelled_english)
        dev = classify.eval_rows(task, ("dev",))
    # The English teacher (as `mdistill run` on this config trains it: same settings, same folder, so
    # a finished teacher is reused from its checkpoint), or the classifier teacher.model names.
    teacher_dir = resolve_model(cfg.teacher.model, cfg.cache_path)
    if c.train_teacher:
        with timings.stage("teacher_train"):
            t_rows = classify.role_rows(task.train, "teacher")
            scaling, threads = train.scaling(cfg.train)
            loop = classify.loop_config(
                cfg,
                "teacher",
                model_path=teacher_dir,
                rows=t_rows.num_rows,
                train=cfg.train,
                eval_path=None,
                threads=threads,
                teacher_base=None,
            )
            classify.fresh_or_resume(out / "ray_train" / "teacher", loop, classify.table_fingerprint(t_rows))
            result = TorchTrainer(
                classify_loop_per_worker,
                train_loop_config={"loop": loop.model_dump()},
                scaling_config=scaling,
                datasets={"train": ray.data.from_arrow(t_rows)},
                dataset_config=train.data_config(),
                run_config=train.run_config("teacher", out / "ray_train", loop.train),
            ).fit()
            card = classifier_card(
                "teacher",
                role="teacher",
                base=cfg.teacher.model,
                teacher="(itself)",
                labels=task.labels,
                test={},
                task=c.task,
                balance=task.balance,
            )
            teacher_dir = str(classify.export_classifier(classify.load_trained(result).model_dir, out / "teacher", card=card))
    with timings.stage("teacher"):
        teacher = open_teacher(cfg.teacher.model_copy(update={"model": teacher_dir, "kind": "classifier"}), cfg.cache_path)
        texts = task.english_train().column("text").combine_chunks()
        sentences = cache_pass.Distinct(ray.data.from_arrow(pa.table({"text": texts})), len(texts))
        with teacher.cache.lock():
            todo = cache_pass.plan(teacher.cache, sentences, None)
            logits = todo.rows.map_batches(teacher.predictor, **teacher.pool_args(ray.nodes())) if todo.rows else None
            teacher_pass = cache_pass.commit(todo, logits)
    # The student's frozen pass (as `mdistill run` on this config: the same cache), then the rows every trial streams.
    with timings.stage("student_frozen_pass"):
        student_base = resolve_model(cfg.student.model, cfg.cache_path)
        s = classify.frozen_student(cfg, student_base)
        if s is not None:
            texts = pa.concat_arrays([task.train.column("text").combine_chunks(), dev.column("text").combine_chunks()])
            sentences = cache_pass.Distinct(ray.data.from_arrow(pa.table({"text": texts})), len(texts))
            with s.cache.lock():
                todo = cache_pass.plan(s.cache, sentences, None)
                states = todo.rows.map_batches(s.predictor, **s.pool_args(ray.nodes())) if todo.rows else None
                cache_pass.commit(todo, states, commit_rows=1024)
        files = classify.task_files(task, teacher.cache, s, out / "task", splits=("dev",))
        rows = classify.role_rows(task.train, "soft")

    # 4. The search: Tune over Train, ASHA on the pooled dev accuracy.
    concurrent = tc.max_concurrent_trials or concurrent_trainers(ray.cluster_resources(), cfg.train.workers, cfg.train.use_gpu)
    max_t = (tc.scheduler.asha.max_t or tc.reports) if tc.scheduler.asha else tc.reports
    trainable = tune.with_resources(
        tune.with_parameters(
            soft_trial,
            base=base,
            files=files,
            rows=rows.num_rows,
            student_base=student_base,
            metric=tc.metric,
            reports=tc.reports,
            concurrent=concurrent,
        ),  # fmt: skip
        TRIAL_RESOURCES,
    )
    if restoring:
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(tc),
            tune_config=tune_config(cfg, concurrent, max_t),
            run_config=tune.RunConfig(
                name=cfg.name, storage_path=str(out / "tune"), callbacks=trial_callbacks(tracker)
            ),  # trials: child runs
        )
    with timings.stage("tune"):
        grid = tuner.fit()

    # 5. Results.
    tune_report = search_results(
        grid,
        cfg,
        base=base,
        experiment=experiment,
        out=out,
        concurrent=concurrent,
        max_t=max_t,
        shapes={"soft": {"train_rows": rows.num_rows}},
    )
    report = RunReport.of_run(
        base,
        t_start,
        timings,
        corpus,
        corpus_reused=corpus.reused,
        data=DataCounts(
            train_pairs={k: v for k, v in task.rows_per_lang(task.train).items() if k != "en"},
            train_english=task.english_train().num_rows,
            dev_pairs=task.rows_per_lang(dev),
            student_rows=rows.num_rows,
        ),  # fmt: skip
        teacher_cache=teacher_pass,
        tune=tune_report,
    )
    write_report(out, report)
    tracker.finish(report)
    print(results_markdown(tune_report), flush=True)
    return report


def soft_trial(
    config: dict, *, base: dict, files: classify.TaskFiles, rows: int, student_base: str, metric: str, reports: int, concurrent: int
) -> None:
    """One trial: the soft student with the sampled values, its dev reports forwarded to Tune."""
    trial_dir = Path(tune.get_context().get_storage().trial_fs_path)
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / STARTS_FILE, "a") as f:
        f.write(f"{time.time()}\n")
    cfg = trial_config(base, config)
    t = cfg.train
    every = dev_every(rows, t.workers, t.batch_size, t.bucket_rows, t.epochs, 1, reports)
    t = t.model_copy(update={"dev_every": every})
    scaling, threads = train.scaling(t, concurrent=concurrent)
    loop = classify.loop_config(
        cfg, "soft", model_path=student_base, rows=rows, train=t, eval_path=None, threads=threads, teacher_base=None,
        states=files.states, dev_path=files.dev,
    )  # fmt: skip
    storage = trial_dir / "ray_train"
    classify.fresh_or_resume(storage / "soft", loop, files.fingerprint)
    TorchTrainer(
        classify_loop_per_worker,
        train_loop_config={"loop": loop.model_dump()},
        scaling_config=scaling,
        datasets={"train": files.role("soft")},
        dataset_config=train.data_config(),
        run_config=train.run_config("soft", storage, t, callbacks=[DevReportCallback(metric)]),
    ).fit()
