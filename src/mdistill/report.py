"""Run report: ``report.json`` (everything), ``report.md`` (what a person reads first) and PNG
plots next to it (``metrics_by_language.png``, ``training.png``, ``tune_trials.png`` when the run
was tuned).

The report dict (what ``pipelines/run.py`` builds; optional keys may be missing)::

    config, finished, total_s, timings_s: {stage: s},
    corpus: {total, languages: {lang: {rows_in, kept, rejected: {reason: n}}}, sources},
    data: {train_pairs: {lang: n}, dev_pairs: {lang: n}, train_english, ...},
    teacher_cache: {distinct_texts, cache_hits, computed, fingerprint, ...},
    metrics: {lang: {"n": n, model: {teacher_space_top1, translation_top1_xx2en, translation_top1_en2xx, mse100, bitext_f1?}}},
    baselines: [model names in metrics that are baselines],
    students: {name: {history: [{epoch, step, loss, samples_per_s, elapsed_s}], steps: [{step, epoch, loss, lr}],
                      dev: [{step, teacher_space_top1, mse100}], export: {path, checked, max_abs_diff},
                      params, strategy, model}},
    summary: {model: {metric: mean over languages}},
    tune?: {metric, mode, trials: [{trial_id, config, status, stopped_early, history: [{training_iteration, metric}]}]}

The earlier single-student layout (``train.history``, ``export``, model ``student``) is read too.
"""

from __future__ import annotations

import json
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from mdistill.evaluation.metrics import summarize

MODELS = ("teacher", "untrained", "linear_map", "student")
METRIC_COLUMNS = (
    ("teacher_space_top1", "teacher-space top-1"),
    ("translation_top1_xx2en", "translation top-1 xx→en"),
    ("translation_top1_en2xx", "en→xx"),
    ("mse100", "MSE×100"),
    ("bitext_f1", "bitext F1"),
)
BASELINE_NOTES = {
    "teacher": "the English teacher alone",
    "untrained": "the student before training",
    "linear_map": "least squares from the frozen student's embeddings to the teacher's, fitted on the training pairs",
}


class Timings(dict):
    @contextmanager
    def stage(self, name: str):
        t0 = time.time()
        print(f"[mdistill] stage {name} ...", flush=True)
        try:
            yield
        finally:
            self[name] = round(time.time() - t0, 2)
            print(f"[mdistill] stage {name} done in {self[name]:.1f}s", flush=True)


def _fmt(v, spec: str = ".3f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _columns(table: dict) -> list[tuple[str, str]]:
    present = {k for row in table.values() for m in row.values() if isinstance(m, dict) for k in m}
    return [(k, label) for k, label in METRIC_COLUMNS if k in present]


def metrics_markdown(table: dict, models: list[str] | tuple[str, ...] | None = None) -> str:
    """Per-language table, one line per (language, model); ``–`` where a metric is undefined."""
    from mdistill.plots import model_order

    models = list(models) if models is not None else model_order(table, MODELS)
    cols = _columns(table)
    lines = [
        "| lang | n | model | " + " | ".join(label for _, label in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for lang, row in table.items():
        for m in models:
            if isinstance(row.get(m), dict):
                lines.append(f"| {lang} | {row.get('n', '')} | {m} | " + " | ".join(_fmt(row[m].get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def summary_markdown(summary: dict, models: list[str], students: list[str] = ()) -> str:
    cols = [(k, label) for k, label in METRIC_COLUMNS if any(k in summary.get(m, {}) for m in models)]
    lines = ["| model | " + " | ".join(label for _, label in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in models:
        if m in summary:
            name = f"**{m}**" if m in students else m
            lines.append(f"| {name} | " + " | ".join(_fmt(summary[m].get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def _students(report: dict) -> dict:
    if report.get("students"):
        return report["students"]
    if "train" in report or "export" in report:  # the single-student layout
        return {"student": {"history": (report.get("train") or {}).get("history", []), "export": report.get("export") or {}}}
    return {}


def write_plots(out_dir: Path, report: dict) -> dict[str, Path]:
    """The run's PNGs; a plot that fails is skipped with a warning (the report matters more)."""
    from mdistill import plots

    out_dir, written = Path(out_dir), {}
    jobs = []
    if report.get("metrics"):
        jobs.append(
            (
                "metrics_by_language",
                lambda p: plots.metrics_by_language(
                    report["metrics"],
                    p,
                    baselines=report.get("baselines") or [m for m in MODELS[:3]],
                    title=f"Run {report.get('config', {}).get('name', '')}: teacher-space top-1 per language (dev split)",
                ),
            )
        )
    if _students(report):
        jobs.append(("training", lambda p: plots.training_curves(_students(report), p)))
    if report.get("tune"):
        jobs.append(("tune_trials", lambda p: plots.tune_trials(report["tune"], p)))
    for name, fn in jobs:
        try:
            written[name] = fn(out_dir / f"{name}.png")
        except Exception:  # a broken plot must not lose the run's report
            print(f"[mdistill] warning: plot {name} failed:\n{traceback.format_exc()}", flush=True)
    return written


def render_markdown(report: dict, pngs: dict[str, Path] | None = None) -> str:
    from mdistill.plots import model_order

    pngs = pngs or {}
    cfg = report.get("config") or {}
    students = _students(report)
    table = report.get("metrics") or {}
    baselines = report.get("baselines") or [m for m in MODELS[:3] if any(m in r for r in table.values())]
    models = model_order(table, baselines)
    summary = report.get("summary") or summarize(table)

    md = [f"# mdistill run `{cfg.get('name', '?')}`", ""]
    head = f"Finished {report.get('finished', '?')}"
    if report.get("total_s") is not None:
        head += f"; total {report['total_s']:.0f} s"
    md += [head + ".", ""]

    if students:
        md += ["## Students", ""]
        md += [
            "| student | model | params | strategy | teacher-space top-1 | translation top-1 xx→en | MSE×100 | bitext F1 | samples/s | export |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in students.items():
            sm = summary.get(name) or {}
            hist = s.get("history") or []
            sps = hist[-1].get("samples_per_s") if hist else None
            params = s.get("params")
            md.append(
                f"| **{name}** | {s.get('model', cfg.get('student', {}).get('model', '–'))} | {f'{params / 1e6:.1f}M' if params else '–'} | "
                f"{s.get('strategy', '–')} | {_fmt(sm.get('teacher_space_top1'))} | {_fmt(sm.get('translation_top1_xx2en'))} | "
                f"{_fmt(sm.get('mse100'))} | {_fmt(sm.get('bitext_f1'))} | {_fmt(sps, '.0f')} | `{(s.get('export') or {}).get('path', '–')}` |"
            )
        md.append("")

    if table:
        md += ["## Summary (mean over languages)", "", summary_markdown(summary, models, list(students)), ""]
        md += ["## Per language (dev split)", "", metrics_markdown(table, models), ""]
        kinds = dict.fromkeys(b.split(":")[-1] for b in baselines)  # "<student>:linear_map" -> linear_map, once
        notes = [f"{k}: {BASELINE_NOTES[k]}" for k in kinds if k in BASELINE_NOTES]
        if notes:
            md += ["Baselines — " + "; ".join(notes) + ". `–`: undefined (dimension differs from the teacher's).", ""]
        if report.get("beats_baselines") is not None:
            md += [f"Trained student beats every baseline (teacher-space top-1): {report['beats_baselines']}", ""]
        if "metrics_by_language" in pngs:
            md += ["![teacher-space top-1 per language](metrics_by_language.png)", ""]

    corpus_langs = (report.get("corpus") or {}).get("languages") or {}
    data = report.get("data") or {}
    if corpus_langs or data:
        md += ["## Data", "", "| lang | rows in | kept | rejected | train pairs | dev pairs |", "|---|---|---|---|---|---|"]
        for lang in sorted(set(corpus_langs) | set(data.get("train_pairs") or {}) | set(data.get("dev_pairs") or {})):
            m = corpus_langs.get(lang, {})
            rej = sum((m.get("rejected") or {}).values()) if m else None
            md.append(
                f"| {lang} | {_fmt(m.get('rows_in'))} | {_fmt(m.get('kept'))} | {_fmt(rej)} | "
                f"{_fmt((data.get('train_pairs') or {}).get(lang, 0))} | {_fmt((data.get('dev_pairs') or {}).get(lang, 0))} |"
            )
        if data.get("train_english") is not None:
            md += ["", f"Distinct English training sentences: {data['train_english']}."]
        sources = (report.get("corpus") or {}).get("sources")
        if sources:
            md += ["", "Sources: " + "; ".join(f"{k}: {_summ(v)}" for k, v in sources.items()) + "."]
        md.append("")
    c = report.get("teacher_cache")
    if c:
        md += [
            f"Teacher cache: {c.get('distinct_texts')} distinct texts, {c.get('cache_hits')} cache hits, {c.get('computed')} computed "
            f"(fingerprint `{str(c.get('fingerprint', ''))[:12]}`).",
            "",
        ]

    if report.get("timings_s"):
        md += [
            "## Timings (s)",
            "",
            "| stage | seconds |",
            "|---|---|",
            *[f"| {k} | {v:.1f} |" for k, v in report["timings_s"].items()],
            "",
        ]

    if students:
        md += ["## Training", ""]
        for name, s in students.items():
            md += [f"### {name}", "", "| epoch | step | loss | samples/s | elapsed s |", "|---|---|---|---|---|"]
            md += [
                f"| {h.get('epoch', '–')} | {_fmt(h.get('step'))} | {_fmt(h.get('loss'), '.5f')} | {_fmt(h.get('samples_per_s'), '.0f')} | "
                f"{_fmt(h.get('elapsed_s'), '.0f')} |"
                for h in s.get("history") or []
            ]
            e = s.get("export") or {}
            if e.get("checked") is not None:
                md += [
                    "",
                    f"Export check: `SentenceTransformer(path).encode` vs mdistill's own forward on {e['checked']} dev sentences, "
                    f"max abs diff {_fmt(e.get('max_abs_diff'), '.2e')}.",
                ]
            md.append("")
        if "training" in pngs:
            md += ["![training loss and dev metric over steps](training.png)", ""]

    tune = report.get("tune")
    if tune:
        metric, mode = tune.get("metric", "?"), tune.get("mode", "max")
        md += [
            f"## Tune ({metric}, {mode})",
            "",
            "| trial | status | stopped early | iterations | best | config |",
            "|---|---|---|---|---|---|",
        ]
        for t in tune.get("trials") or []:
            vals = [h[metric] for h in t.get("history") or [] if h.get(metric) is not None]
            best = (max(vals) if mode == "max" else min(vals)) if vals else None
            md.append(
                f"| {t.get('trial_id')} | {t.get('status', '–')} | {'yes' if t.get('stopped_early') else 'no'} | {len(t.get('history') or [])} | "
                f"{_fmt(best)} | `{json.dumps(t.get('config', {}), default=str)}` |"
            )
        md.append("")
        if tune.get("best") and tune.get("worst"):
            b, w = tune["best"], tune["worst"]
            md += [
                f"{len(tune.get('trials') or [])} trials, {tune.get('stopped_early', '?')} stopped early. Best trial {b.get('trial_id')} "
                f"{_fmt(b.get('best'), '.4f')}, worst {w.get('trial_id')} {_fmt(w.get('best'), '.4f')}: gap {_fmt(tune.get('gap'), '.4f')} "
                f"({metric}, best value of each trial). Best config: `{tune.get('best_config', 'best_config.yaml')}`.",
                "",
            ]
        if "tune_trials" in pngs:
            md += ["![tune trials](tune_trials.png)", ""]
    return "\n".join(md).rstrip() + "\n"


def _summ(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {v[k]}" for k in ("rows_in", "kept") if k in v) or json.dumps(v, default=str)
    return str(v)


def write_report(out_dir: Path, report: dict) -> None:
    """``report.json``, the PNGs and ``report.md`` (linking them) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    pngs = write_plots(out_dir, report)
    (out_dir / "report.md").write_text(render_markdown(report, pngs))
