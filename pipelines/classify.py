"""Cross-lingual classifier transfer: ``mdistill run configs/classify.yaml``.

corpus -> task (LibreOffice help paragraphs labelled by help module, split by help file) ->
teacher (an English classifier: trained here on the English paragraphs, or loaded) -> the
teacher's logits of every English source and evaluation row (actor pool, cached) -> the
student's frozen pass (cached states) -> one TorchTrainer per student, as many at once as the
cluster holds (zero-shot and translate-train baselines; soft, hard, online distillation) -> accuracy and macro-F1 per language on the test files -> export + model
cards -> report. Read it top to bottom; every stage is timed in the report.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch
from ray.train.torch import TorchTrainer

from mdistill.assets import resolve_model
from mdistill.config import RunConfig
from mdistill.export import classifier_card
from mdistill.ray_init import init_ray
from mdistill.report import Timings, write_classify_report
from mdistill.report.markdown import render_classify_markdown
from mdistill.report.schema import ClassifierReport, ClassifyReport
from mdistill.resources import concurrent_trainers
from mdistill.stages import cache_pass, classify, train
from mdistill.stages.classify_data import TaskData, select_task
from mdistill.stages.corpus import build_corpus
from mdistill.stages.teacher import open_teacher
from mdistill.storage import check_shared
from mdistill.tracking import RunTracker
from mdistill.training.classify_loop import classify_loop_per_worker


def _trainer(
    cfg: RunConfig, role: str, rows: ray.data.Dataset, fingerprint: str, loop, scaling, tracker: RunTracker | None
) -> TorchTrainer:
    storage = cfg.output_path / "ray_train"
    classify.fresh_or_resume(storage / role, loop, fingerprint)
    tracking = tracker.training(role, child=True, params={"train": loop.train}) if tracker else None  # a child run per classifier
    return TorchTrainer(
        classify_loop_per_worker,
        train_loop_config={"loop": loop.model_copy(update={"tracking": tracking}).model_dump()},
        scaling_config=scaling,
        datasets={"train": rows},
        dataset_config=train.data_config(),
        run_config=train.run_config(role, storage, loop.train, worker_env=train.SHARED_CPU_ENV if not loop.train.use_gpu else None),
    )


def _report_of(
    role: str, loop, rows: pa.Table, trained: classify.TrainedClassifier, export: str | None, diff: float | None = None
) -> ClassifierReport:
    langs = sorted(set(rows.column("lang").to_pylist()))
    return ClassifierReport(
        role=role, mode=loop.mode, base=loop.model_path, train_rows=rows.num_rows, languages=langs, epochs=loop.train.epochs,
        train_layers=loop.train_layers, params=classify.param_count(trained.model_dir), export=export, logs=trained.logs,
        export_max_abs_diff=diff,
    )  # fmt: skip


def train_teacher(cfg: RunConfig, task: TaskData, timings: Timings, tracker: RunTracker | None) -> tuple[str, ClassifierReport | None]:
    """The English teacher: ``teacher.model`` fine-tuned on the English training paragraphs (Ray
    Train), or, with ``classify.train_teacher: false``, ``teacher.model`` as it is."""
    if not cfg.classify.train_teacher:
        return resolve_model(cfg.teacher.model, cfg.cache_path), None
    with timings.stage("teacher_train"):
        base = resolve_model(cfg.teacher.model, cfg.cache_path)
        rows = classify.role_rows(task.train, "teacher")
        scaling, threads = train.scaling(cfg.train)
        loop = classify.loop_config(
            cfg, "teacher", model_path=base, rows=rows.num_rows, train=cfg.train, eval_path=None, threads=threads, teacher_base=None
        )
        trainer = _trainer(cfg, "teacher", ray.data.from_arrow(rows), classify.table_fingerprint(rows), loop, scaling, tracker)
        trained = classify.load_trained(trainer.fit())
        card = classifier_card(
            "teacher",
            role="teacher",
            base=cfg.teacher.model,
            teacher="(itself)",
            labels=task.labels,
            test={},
            task=cfg.classify.task,
            balance=task.balance,
        )  # the run rewrites it with the test metrics
        exported = classify.export_classifier(trained.model_dir, cfg.output_path / "teacher", card=card)
    return str(exported), _report_of("teacher", loop, rows, trained, str(exported))


def run(cfg: RunConfig) -> ClassifyReport:
    t_start, timings, out, c = time.time(), Timings(), cfg.output_path, cfg.classify
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tracker = RunTracker(cfg, timings, recipe="classify")  # tracking: MLflow run / TensorBoard folder (off unless set)
    init_ray(cfg.ray)
    check_shared({"cache_dir": cfg.cache_path, "output_dir": out} | cfg.tracking.shared_folders())  # several nodes: every one must see them

    # 1. Corpus and task: labelled help paragraphs (English + translations), split by help file.
    with timings.stage("corpus"):
        corpus = build_corpus(cfg.corpus, cfg.cache_path)
        task = select_task(corpus, cfg.corpus.langs, c.max_train_english, c.max_eval_english, c.labelled_english)

    # 2. Teacher: an English classifier, trained on the English training paragraphs or loaded.
    teacher_dir, teacher_report = train_teacher(cfg, task, timings, tracker)

    # 3. Teacher logits of every English training source (the targets) and every evaluation row
    #    (the teacher-alone baseline), once, on an actor pool, into the content-addressed cache.
    with timings.stage("teacher"):
        teacher = open_teacher(cfg.teacher.model_copy(update={"model": teacher_dir, "kind": "classifier"}), cfg.cache_path)
        texts = pa.concat_arrays([task.english_train().column("text").combine_chunks(), task.eval.column("text").combine_chunks()])
        sentences = cache_pass.Distinct(ray.data.from_arrow(pa.table({"text": texts})), len(texts))
        with teacher.cache.lock():
            todo = cache_pass.plan(teacher.cache, sentences, None)
            logits = todo.rows.map_batches(teacher.predictor, **teacher.pool_args(ray.nodes())) if todo.rows else None
            teacher_pass = cache_pass.commit(todo, logits)

    # 4. The student's frozen pass: its hidden states after the frozen layers, once per text
    #    (cached), so every role's step runs only the top layers; the task's rows joined with them
    #    (and with the teacher's logits of their English source) on Ray Data.
    with timings.stage("student_frozen_pass"):
        student_base = resolve_model(cfg.student.model, cfg.cache_path)
        s, states_pass = classify.frozen_student(cfg, student_base), None
        if s is not None:
            texts = pa.concat_arrays([task.train.column("text").combine_chunks(), task.eval.column("text").combine_chunks()])
            sentences = cache_pass.Distinct(ray.data.from_arrow(pa.table({"text": texts})), len(texts))
            with s.cache.lock():
                todo = cache_pass.plan(s.cache, sentences, None)
                states = todo.rows.map_batches(s.predictor, **s.pool_args(ray.nodes())) if todo.rows else None
                states_pass = cache_pass.commit(todo, states, commit_rows=1024)
        files = classify.task_files(task, teacher.cache, s, out / "task")

    # 5. One TorchTrainer per student, `concurrent` at a time: the baselines and the distilled students.
    with timings.stage("train"):
        teacher_base = resolve_model(cfg.teacher.model, cfg.cache_path) if c.train_teacher else teacher_dir
        all_rows = task.train.num_rows
        trainers, loops, rows_of = {}, {}, {}
        concurrent = min(
            len(c.students), c.concurrent_students or concurrent_trainers(ray.cluster_resources(), cfg.train.workers, cfg.train.use_gpu)
        )
        for role in classify.longest_first(c.students):
            rows_of[role] = classify.role_rows(task.train, role)
            tcfg = classify.role_train_config(cfg.train, role, rows_of[role].num_rows, all_rows)
            scaling, threads = train.scaling(tcfg, concurrent=concurrent)
            threads = classify.role_threads(role, threads, tcfg)
            loops[role] = classify.loop_config(
                cfg, role, model_path=student_base, rows=rows_of[role].num_rows, train=tcfg, eval_path=files.eval, threads=threads,
                teacher_base=teacher_base, states=files.states,
            )  # fmt: skip
            trainers[role] = _trainer(cfg, role, files.role(role), files.fingerprint, loops[role], scaling, tracker)
        results = train.fit_all(trainers, max_concurrent=concurrent)
        trained = {role: classify.load_trained(results[role]) for role in c.students}  # reported in the config's order

    # 6. Evaluate per language on the test (and dev) files: the teacher on every language, each student.
    with timings.stage("evaluate"):
        logits_by_model = {"teacher": teacher.cache.lookup(task.eval.column("text").to_pylist(), column="logits")}
        logits_by_model |= {role: t.eval_logits for role, t in trained.items()}
        test = classify.metrics_table(task.eval, logits_by_model, "test")
        dev = classify.metrics_table(task.eval, logits_by_model, "dev")
        n_labels = len(task.labels)
        confusion = {m: classify.confusion(task.eval, lg, "test", n_labels) for m, lg in logits_by_model.items()}
        checks = classify.transfer_checks(test, "soft", of_teacher=c.teacher_tolerance) if "soft" in trained else {}

    # 7. Export every classifier as a Hugging Face directory with its model card.
    classifiers = {}
    with timings.stage("export"):
        card = dict(labels=task.labels, teacher=teacher_dir, test=test, task=c.task, balance=task.balance)
        if teacher_report is not None:
            (out / "teacher" / "README.md").write_text(classifier_card("teacher", role="teacher", base=teacher_report.base, **card))
            classifiers["teacher"] = teacher_report
        paths = {
            role: classify.export_classifier(
                t.model_dir, out / "models" / role, classifier_card(role, role=role, base=student_base, **card)
            )
            for role, t in trained.items()
        }
        # each export, loaded as users load it, against the logits evaluated (from cached states)
        n, texts = classify.EXPORT_CHECK_ROWS, task.eval.column("text").to_pylist()[: classify.EXPORT_CHECK_ROWS]
        check = ray.remote(classify.export_check)
        refs = [
            check.remote(str(p), texts, trained[role].eval_logits[:n], max_seq_length=loops[role].max_seq_length, prompt=loops[role].prompt)
            for role, p in paths.items()
        ]
        diffs = dict(zip(paths, ray.get(refs)))
        for role, t in trained.items():
            classifiers[role] = _report_of(role, loops[role], rows_of[role], t, str(paths[role]), diffs[role])

    report = ClassifyReport.of_run(
        cfg.model_dump(mode="json"),
        t_start,
        timings,
        corpus,
        task=c.task,
        labels=task.labels,
        balance=task.balance,
        available=task.available,
        dropped=task.dropped,
        rows={"train": task.rows_per_lang(task.train), "eval": task.rows_per_lang(task.eval)},
        teacher=teacher_dir,
        teacher_cache=teacher_pass,
        states_cache=states_pass,
        classifiers=classifiers,
        test=test,
        dev=dev,
        confusion=confusion,
        checks=checks,
    )
    write_classify_report(out, report)
    tracker.finish(report)
    print(render_classify_markdown(report), flush=True)
    return report


def teacher_only(cfg: RunConfig) -> tuple[str, float]:
    """``mdistill teacher train-classifier``: steps 1 and 2 only; the teacher's English dev accuracy."""
    from mdistill.encode import load_classifier
    from mdistill.evaluation.ClassificationEvaluator import ClassificationEvaluator

    init_ray(cfg.ray)
    c, timings = cfg.classify, Timings()
    corpus = build_corpus(cfg.corpus, cfg.cache_path)
    task = select_task(corpus, cfg.corpus.langs, c.max_train_english, c.max_eval_english, c.labelled_english)
    path, _ = train_teacher(cfg, task, timings, None)
    dev = task.eval.filter(
        pa.compute.and_(pa.compute.equal(task.eval.column("split"), "dev"), pa.compute.equal(task.eval.column("lang"), "en"))
    )
    model, tokenizer = load_classifier(path)
    acc = ClassificationEvaluator(
        dev.column("text").to_pylist(), dev.column("label_id").to_pylist(), max_seq_length=cfg.teacher.max_seq_length
    )(model, tokenizer)
    return path, acc["accuracy"]
