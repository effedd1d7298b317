"""Hyper-parameter search: ``mdistill tune configs/tune-small.yaml``.

corpus -> selection -> teacher (cached) -> per distinct student shape in the space: build, frozen
pass (cached), training set, linear maps -> Ray Tune: every trial trains a student on Ray Train
(Tune over Train V2: the trial is a function that builds a ``TorchTrainer`` and calls ``fit()``;
a ``TuneReportCallback`` on the trainer forwards its dev reports to Tune), ASHA stopping the weak
ones -> results table, ``best_config.yaml``, report with a per-trial plot -> optionally ``mdistill
run`` of the best config (a separate process, with its own Ray instance).

Trials only train: the teacher vectors and training sets are prepared before Tune starts. An
interrupted search resumes with ``Tuner.restore``: finished trials keep their results.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import ray
import torch
from ray import tune
from ray.data.expressions import col
from ray.train.torch import TorchTrainer

from mdistill.config import RunConfig
from mdistill.log import get_logger
from mdistill.ray_init import init_ray
from mdistill.report import Timings, load_report, write_report
from mdistill.report.schema import RunReport
from mdistill.resources import concurrent_trainers
from mdistill.stages import cache_pass, student, train
from mdistill.stages.corpus import build_corpus
from mdistill.stages.select import select_data
from mdistill.stages.teacher import open_teacher
from mdistill.stages.tune import (
    STARTS_FILE,
    TRIAL_FILE,
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
from mdistill.training.loop import train_loop_per_worker
from mdistill.tune_space import dev_every, search_space, shape_key, student_shapes, trial_config

log = get_logger("tune")


def tune_run(cfg: RunConfig) -> RunReport:
    t_start, timings, out, tc = time.time(), Timings(), cfg.output_path, cfg.tune
    if tc is None:
        raise ValueError("the config has no tune: section")
    if cfg.students:
        raise ValueError("mdistill tune searches one student: remove the students: list")
    if cfg.teacher.kind != "embedding":
        raise ValueError("mdistill tune trains embedding students only (teacher.kind: embedding)")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    base = cfg.model_dump(mode="json")
    storage = out / "tune"
    experiment = storage / cfg.name
    fresh_or_restore(experiment, base)  # an interrupted search with the same settings resumes
    restoring = tune.Tuner.can_restore(str(experiment))
    # tracking: the search's MLflow run (a restored search continues its own: its trials' callbacks name it)
    tracker = RunTracker(cfg, timings, recipe="tune", run_file=storage / f"{cfg.name}.mlflow_run", resume=restoring)
    init_ray(cfg.ray)
    check_shared({"cache_dir": cfg.cache_path, "output_dir": out} | cfg.tracking.shared_folders())  # several nodes: every one must see them

    # 1-2. Corpus, selection and teacher vectors, once for every trial.
    with timings.stage("corpus"):
        corpus = build_corpus(cfg.corpus, cfg.cache_path)
        data = select_data(corpus, cfg.corpus.langs, cfg.eval.max_dev_per_lang, cfg.eval.max_heldout_per_lang)
    with timings.stage("teacher"):
        sentences = cache_pass.Distinct(
            data.sentences(), data.counts.student_rows, flag="teacher"
        )  # every text once, the teacher's flagged
        teacher = open_teacher(cfg.teacher, cfg.cache_path)
        with teacher.cache.lock():
            todo = cache_pass.plan(teacher.cache, lambda: sentences().filter(expr=col("teacher")), data.fingerprint)
            vectors = todo.rows.map_batches(teacher.predictor, **teacher.pool_args(ray.nodes())) if todo.rows else None
            teacher_pass = cache_pass.commit(todo, vectors)

    # 3. One frozen pass and training set per distinct student shape of the space: trials only train.
    shapes = {}
    with timings.stage("student_frozen_pass"):
        for values in student_shapes(cfg):
            key = shape_key(values)
            scfg = trial_config(base, values).student
            s = student.build(key, scfg, cfg.cache_path, data, batch_size=cfg.eval.batch_size)
            ts, states_pass = student.find_training_set(data, teacher.cache, s, cfg.cache_path), None  # joined by an earlier run?
            if ts is None:
                with s.cache.lock():
                    todo = cache_pass.plan(s.cache, sentences, data.fingerprint)
                    states = todo.rows.map_batches(s.predictor, **s.pool_args(ray.nodes())) if todo.rows else None
                    states_pass = cache_pass.commit(todo, states, commit_rows=1024)  # ~50 KB of states a row
                ts = student.prepare_training_set(data, teacher.cache, s, cfg.cache_path)
            maps = student.fit_linear_maps(ts, scfg, key)
            head = train.save_head(out / "tune_prep", key, maps.head)
            shapes[key] = {"student": s, "training_set": ts, "head": head, "states_cache": states_pass and states_pass.model_dump()}

    # 4. The search: Tune over Train, ASHA on the dev metric, resumed if it was interrupted.
    concurrent = tc.max_concurrent_trials or concurrent_trainers(ray.cluster_resources(), cfg.train.workers, cfg.train.use_gpu)
    max_t = (tc.scheduler.asha.max_t or tc.reports) if tc.scheduler.asha else tc.reports
    log.info("%d sample(s), %d trial(s) at once, ASHA max_t %d", tc.num_samples, concurrent, max_t)
    trainable = tune.with_resources(
        tune.with_parameters(distill_trial, base=base, shapes=shapes, metric=tc.metric, reports=tc.reports, concurrent=concurrent),
        TRIAL_RESOURCES,
    )
    if restoring:
        log.info("resuming %s (finished trials are kept)", experiment)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(tc),
            tune_config=tune_config(cfg, concurrent, max_t),
            run_config=tune.RunConfig(name=cfg.name, storage_path=str(storage), callbacks=trial_callbacks(tracker)),  # trials: child runs
        )
    with timings.stage("tune"):
        grid = tuner.fit()

    # 5. Results: every trial's history, best and worst, the best config as a runnable file.
    tune_report = search_results(
        grid,
        cfg,
        base=base,
        experiment=experiment,
        out=out,
        concurrent=concurrent,
        max_t=max_t,
        shapes={k: {"states_cache": v["states_cache"], "train_rows": v["training_set"].train_rows} for k, v in shapes.items()},
    )

    # 6. Optionally: the best config trained on the full data and exported, as `mdistill run` does.
    if tc.retrain_best:
        best_file = Path(tune_report.best_config)
        best_cfg = trial_config(base | {"name": f"{cfg.name}-best", "output_dir": "runs/{name}", "tune": None}, tune_report.best.config)
        with timings.stage("retrain_best"):
            if cfg.ray.address is None:
                ray.shutdown()  # the run starts its own local instance
            subprocess.run([sys.executable, "-m", "mdistill.cli", "run", str(best_file)], check=True)
        retrained = load_report(best_cfg.output_path)
        tune_report.retrained = {
            "output_dir": str(best_cfg.output_path),
            "summary": {k: v.model_dump() for k, v in retrained.summary.items()},
        }
    report = RunReport.of_run(
        base,
        t_start,
        timings,
        corpus,
        corpus_reused=corpus.reused,
        data=data.counts,
        teacher_cache=teacher_pass,
        tune=tune_report,
    )
    write_report(out, report)
    tracker.finish(report)
    print(results_markdown(tune_report), flush=True)
    return report


def distill_trial(config: dict, *, base: dict, shapes: dict, metric: str, reports: int, concurrent: int) -> None:
    """One trial (a Tune function trainable): the base config + the sampled values, trained by a
    ``TorchTrainer`` whose dev reports reach Tune through ``TuneReportCallback``."""
    # The trial's folder in the experiment's storage (not the session's working copy): Train's
    # checkpoints go there, so a restored search finds them; so do the start marks.
    trial_dir = Path(tune.get_context().get_storage().trial_fs_path)
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / STARTS_FILE, "a") as f:
        f.write(f"{time.time()}\n")
    cfg = trial_config(base, config)
    shape = shapes[shape_key(config)]
    ts, t = shape["training_set"], cfg.train
    every = dev_every(ts.train_rows, t.workers, t.batch_size, t.bucket_rows, t.epochs, t.grad_accum, reports)
    t = t.model_copy(update={"dev_every": every, "checkpoint_every": None})
    (trial_dir / TRIAL_FILE).write_text(json.dumps({"dev_every": every, "reports": reports, "shape": shape_key(config)}))
    scaling, threads = train.scaling(t, concurrent=concurrent)
    loop = train.loop_config(shape["student"], ts, t, seed=cfg.seed, head_path=shape["head"], threads=threads)
    storage = trial_dir / "ray_train"
    train.fresh_or_resume(storage / "student", loop, ts)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop.model_dump()},
        scaling_config=scaling,
        datasets={"train": ts.train()},
        dataset_config=train.data_config(),
        run_config=train.run_config("student", storage, t, callbacks=[DevReportCallback(metric)]),
    )
    trainer.fit()
