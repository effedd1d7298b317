"""Run reports: ``report.json`` (a ``RunReport``), ``report.md`` (what a person reads first) and PNG
plots next to it (``metrics_by_language.png``, ``training.png``, ``tune_trials.png`` when tuned);
``mdistill eval`` writes ``eval.json`` (an ``EvalReport``), ``eval.md`` and ``eval_metrics.png``.
"""

from __future__ import annotations

import resource
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mdistill.log import get_logger
from mdistill.report.schema import ClassifyReport, EvalReport, ReportError, RunReport, load_report

log = get_logger("report")

__all__ = [
    "ClassifyReport",
    "EvalReport",
    "ReportError",
    "RunReport",
    "Timings",
    "load_report",
    "write_classify_report",
    "write_eval",
    "write_report",
]


class Timings(dict):
    """Seconds per stage, in order, logged as each one starts and ends; ``peak_rss_mb`` holds the
    driver's peak resident memory at the end of each stage (the first stage that raises it is
    where the driver holds something). ``listeners`` are called as each stage ends, with its name,
    seconds and the exception it raised, if any (the experiment trackers)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak_rss_mb: dict[str, float] = {}
        self.listeners: list[Callable[[str, float, BaseException | None], None]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0, error = time.time(), None
        log.info("stage %s ...", name)
        try:
            yield
        except BaseException as e:
            error = e
            raise
        finally:
            self[name] = round(time.time() - t0, 2)
            self.peak_rss_mb[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
            log.info("stage %s done in %.1fs (driver peak RSS %.0f MB)", name, self[name], self.peak_rss_mb[name])
            for listener in self.listeners:
                listener(name, self[name], error)


def _plots(out_dir: Path, jobs: list[tuple[str, Callable[[Path], Path]]]) -> dict[str, Path]:
    """Each plot that works; one that fails is logged and skipped (the report matters more)."""
    written = {}
    for name, fn in jobs:
        try:
            written[name] = fn(out_dir / f"{name}.png")
        except Exception:
            log.warning("plot %s failed:\n%s", name, traceback.format_exc())
    return written


def write_report(out_dir: Path, report: RunReport) -> None:
    from mdistill import plots
    from mdistill.report.markdown import render_markdown

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(report.model_dump_json(indent=2))
    jobs = []
    if report.metrics:
        title = f"Run {report.name}: teacher-space top-1 per language (dev split)"
        jobs.append(
            ("metrics_by_language", lambda p: plots.metrics_by_language(report.metrics, p, baselines=report.baselines, title=title))
        )
    if report.heldout_metrics:
        title = f"Run {report.name}: teacher-space top-1 per language (held-out sources, out of domain)"
        jobs.append(
            (
                "heldout_by_language",
                lambda p: plots.metrics_by_language(report.heldout_metrics, p, baselines=report.baselines, title=title),
            )
        )
    if report.students:
        jobs.append(("training", lambda p: plots.training_curves({n: s.logs for n, s in report.students.items()}, p)))
    if report.tune:
        jobs.append(("tune_trials", lambda p: plots.tune_trials(report.tune, p)))
    (out_dir / "report.md").write_text(render_markdown(report, _plots(out_dir, jobs)))


def write_eval(out_dir: Path, result: EvalReport) -> None:
    from mdistill import plots
    from mdistill.report.markdown import eval_markdown

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(result.model_dump_json(indent=2))
    metrics = ("teacher_space_top1", "translation_top1_xx2en", "bitext_f1")
    title = f"mdistill eval: {Path(result.data).name}"
    _plots(
        out_dir,
        [
            (
                "eval_metrics",
                lambda p: plots.metrics_by_language(result.metrics, p, metrics=metrics, baselines=result.baselines, title=title),
            )
        ],
    )
    (out_dir / "eval.md").write_text(eval_markdown(result))


def write_classify_report(out_dir: Path, report: ClassifyReport) -> None:
    """``report.json``, the PNGs (accuracy per language and model; confusion matrix of the soft
    student, or the first student, on the test translations) and ``report.md``."""
    from mdistill import plots
    from mdistill.report.markdown import render_classify_markdown

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(report.model_dump_json(indent=2))
    jobs = [
        (
            "accuracy_by_language",
            lambda p: plots.classify_by_language(report.test, p, title=f"Run {report.name}: test accuracy per language"),
        )
    ]
    students = [m for m in report.confusion if m != "teacher"]
    shown = "soft" if "soft" in students else (students[0] if students else None)
    if shown:
        title = f"{shown}: test translations, true (rows) vs predicted"
        jobs.append(("confusion_matrix", lambda p: plots.confusion_matrix(report.confusion[shown], report.labels, p, title=title)))
    jobs.append(("training", lambda p: plots.training_curves({n: c.logs for n, c in report.classifiers.items()}, p)))
    (out_dir / "report.md").write_text(render_classify_markdown(report, _plots(out_dir, jobs)))
