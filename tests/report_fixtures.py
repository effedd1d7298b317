"""Valid ``RunReport``s for tests of what reads reports (registry, scheduler, model card, report
rendering) without a training run: every field set, the metrics chosen by the test."""

from __future__ import annotations

from mdistill.report.schema import (
    CachePass,
    CorpusSummary,
    Counts,
    DataCounts,
    EpochRecord,
    ExportCheck,
    LanguageRow,
    Metrics,
    RunReport,
    StudentReport,
    TrainLogs,
)

KEY = "teacher_space_top1"


def cache_pass(n: int = 10) -> CachePass:
    return CachePass(fingerprint="f" * 32, distinct_texts=n, cache_hits=0, computed=n, seconds=1.0)


def student_report(path: str, *, model: str = "tiny-student", params: int = 1_000_000, strategy: str = "ddp") -> StudentReport:
    logs = TrainLogs(
        history=[EpochRecord(epoch=1, step=10, loss=0.01, elapsed_s=5.0, samples_per_s=100.0, first_batch_s=1.0, loss_fn="MSELoss")]
    )
    return StudentReport(
        model=model, built_from=[{"step": "load", "model": model}], params=params, layers=3, train_layers=2, projection="lstsq",
        strategy=strategy, loss="mse", logs=logs, states_cache=cache_pass(), training_set="t" * 32, export=ExportCheck(path=path, checked=10, max_abs_diff=1e-6),
    )  # fmt: skip


def run_report(
    name: str, students: dict[str, tuple[str, float]], langs: tuple[str, ...] = ("de",), teacher: str = "tiny-teacher"
) -> RunReport:
    """``students``: name -> (exported model path, the key metric in every language)."""
    metrics = {
        lang: LanguageRow(
            n=10, models={"teacher": Metrics(**{KEY: 0.4}), **{s: Metrics(**{KEY: v, "mse100": 0.2}) for s, (_, v) in students.items()}}
        )
        for lang in langs
    }
    counts = Counts(rows_in=100, kept=90, rejected={"empty": 10}, kept_by_split={"train": 80, "dev": 10})
    return RunReport(
        config={"name": name, "teacher": {"model": teacher}, "corpus": {"langs": list(langs)}},
        finished="2026-11-22T10:00:00+00:00",
        total_s=10.0,
        timings_s={"corpus": 1.0},
        corpus=CorpusSummary(**counts.model_dump(), languages={lang: counts for lang in langs}, sources={"fixture": counts}),
        corpus_dir="/nonexistent/corpus",
        corpus_reused=False,
        data=DataCounts(
            train_pairs={lang: 80 for lang in langs}, train_english=80, dev_pairs={lang: 10 for lang in langs}, student_rows=200
        ),
        teacher_cache=cache_pass(),
        students={s: student_report(path) for s, (path, _) in students.items()},
        metrics=metrics,
        baselines=["teacher"],
        summary={"teacher": Metrics(**{KEY: 0.4}), **{s: Metrics(**{KEY: v, "mse100": 0.2}) for s, (_, v) in students.items()}},
    )
