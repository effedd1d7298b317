"""``report.md`` / ``eval.md``: what a person reads first, rendered from the typed reports."""

from __future__ import annotations

import json
from pathlib import Path

from mdistill.report.schema import METRIC_NAMES, ClassifyReport, ClassifyTable, EvalReport, Metrics, MetricsTable, RunReport

METRIC_LABELS = {
    "teacher_space_top1": "teacher-space top-1",
    "translation_top1_xx2en": "translation top-1 xx→en",
    "translation_top1_en2xx": "en→xx",
    "mse100": "MSE×100",
    "bitext_f1": "bitext F1",
}
BASELINE_NOTES = {
    "teacher": "the English teacher alone",
    "untrained": "the student before training",
    "linear_map": "least squares from the untrained student's pooled output to the teacher's vectors, fitted on the training rows",
}


def fmt(v, spec: str = ".3f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _columns(metrics: list[Metrics]) -> list[str]:
    return [k for k in METRIC_NAMES if any(getattr(m, k) is not None for m in metrics)]


def timings_markdown(timings: dict[str, float]) -> list[str]:
    return ["## Timings (s)", "", "| stage | seconds |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in timings.items()], ""]


def metrics_markdown(table: MetricsTable, models: list[str]) -> str:
    """Per-language table, one line per (language, model); ``–`` where a metric is undefined."""
    cols = _columns([m for row in table.values() for m in row.models.values()])
    lines = ["| lang | n | model | " + " | ".join(METRIC_LABELS[k] for k in cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for lang, row in table.items():
        for m in models:
            if m in row.models:
                lines.append(f"| {lang} | {row.n} | {m} | " + " | ".join(fmt(getattr(row.models[m], k)) for k in cols) + " |")
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Metrics], models: list[str], students: list[str] = ()) -> str:
    cols = _columns([summary[m] for m in models if m in summary])
    lines = ["| model | " + " | ".join(METRIC_LABELS[k] for k in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in models:
        if m in summary:
            name = f"**{m}**" if m in students else m
            lines.append(f"| {name} | " + " | ".join(fmt(getattr(summary[m], k)) for k in cols) + " |")
    return "\n".join(lines)


def _baseline_notes(baselines: list[str]) -> str:
    kinds = dict.fromkeys(b.split(":")[-1] for b in baselines)  # "<student>:linear_map" -> linear_map, once
    notes = [f"{k}: {BASELINE_NOTES[k]}" for k in kinds if k in BASELINE_NOTES]
    return "Baselines — " + "; ".join(notes) + ". `–`: undefined (dimension differs from the teacher's)." if notes else ""


def render_markdown(report: RunReport, pngs: dict[str, Path] | None = None) -> str:
    from mdistill.plots import model_order

    pngs = pngs or {}
    models = model_order(report.metrics, report.baselines)
    md = [f"# mdistill run `{report.name}`", "", f"Finished {report.finished}; total {report.total_s:.0f} s.", ""]

    if report.students:
        md += [
            "## Students",
            "",
            "| student | model | params | strategy | teacher-space top-1 (dev) | **out-of-domain** | translation top-1 xx→en | MSE×100 | bitext F1 "
            "| samples/s | export |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in report.students.items():
            sm = report.summary.get(name) or Metrics()
            ood = report.heldout_summary.get(name) or Metrics()
            sps = s.logs.history[-1].samples_per_s if s.logs.history else None
            md.append(
                f"| **{name}** | {s.model} | {s.params / 1e6:.1f}M | {s.strategy} | {fmt(sm.teacher_space_top1)} | {fmt(ood.teacher_space_top1)} | "
                f"{fmt(sm.translation_top1_xx2en)} | {fmt(sm.mse100)} | {fmt(sm.bitext_f1)} | {fmt(sps, '.0f')} | `{s.export.path}` |"
            )
        md.append("")

    if report.metrics:
        md += ["## Summary (mean over languages)", "", summary_markdown(report.summary, models, list(report.students)), ""]
        md += ["## Per language (dev split)", "", metrics_markdown(report.metrics, models), ""]
        notes = _baseline_notes(report.baselines)
        if notes:
            md += [notes, ""]
        if report.beats_baselines:
            md += [f"Trained student beats every baseline (teacher-space top-1): {report.beats_baselines}", ""]
        if "metrics_by_language" in pngs:
            md += ["![teacher-space top-1 per language](metrics_by_language.png)", ""]
    if report.heldout_metrics:
        sources = ", ".join(f"`{p}`" for p in report.config.get("corpus", {}).get("heldout_sources", []))
        md += [
            "## Out of domain: held-out sources (never trained on)",
            "",
            f"Sources {sources}: rows whose English never occurs in training. Mean over languages:",
            "",
            summary_markdown(report.heldout_summary, models, list(report.students)),
            "",
            metrics_markdown(report.heldout_metrics, models),
            "",
            f"Trained student beats every baseline out of domain (teacher-space top-1): {report.heldout_beats_baselines}",
            "",
        ]
        if "heldout_by_language" in pngs:
            md += ["![out-of-domain teacher-space top-1 per language](heldout_by_language.png)", ""]
    elif report.metrics:
        md += ["No source is held out (`corpus.heldout_sources`): the numbers above are in-domain only.", ""]

    if report.speed:
        md += compression_markdown(report)

    corpus, data = report.corpus, report.data
    md += [
        "## Data",
        "",
        "| lang | rows in | kept | rejected | train pairs | dev pairs | held-out pairs |",
        "|---|---|---|---|---|---|---|",
    ]
    for lang in sorted(set(corpus.languages) | set(data.train_pairs) | set(data.dev_pairs)):
        m = corpus.languages.get(lang)
        md.append(
            f"| {lang} | {fmt(m.rows_in if m else None)} | {fmt(m.kept if m else None)} | {fmt(sum(m.rejected.values()) if m else None)} | "
            f"{data.train_pairs.get(lang, 0)} | {data.dev_pairs.get(lang, 0)} | {data.heldout_pairs.get(lang, 0)} |"
        )
    md += ["", f"Distinct English training sentences: {data.train_english}; sentences the student learns from: {data.student_rows}."]
    if corpus.sources:
        md += ["", "Sources: " + "; ".join(f"{k}: rows_in {v.rows_in}, kept {v.kept}" for k, v in corpus.sources.items()) + "."]
    c = report.teacher_cache
    md += [
        "",
        f"Teacher cache: {c.distinct_texts} distinct texts, {c.cache_hits} cache hits, {c.computed} computed (fingerprint `{c.fingerprint[:12]}`).",
        "",
        *timings_markdown(report.timings_s),
    ]

    if report.students:
        md += ["## Training", ""]
        for name, s in report.students.items():
            md += [f"### {name}", "", "| epoch | step | loss | samples/s | elapsed s |", "|---|---|---|---|---|"]
            md += [f"| {h.epoch} | {h.step} | {h.loss:.5f} | {h.samples_per_s:.0f} | {h.elapsed_s:.0f} |" for h in s.logs.history]
            c = s.states_cache
            frozen = (
                f"frozen pass over {c.distinct_texts} sentences, {c.cache_hits} cache hits, {c.computed} computed"
                if c
                else "frozen pass skipped: an earlier run's training set was reused"
            )
            md += ["", f"Training set `{s.training_set[:12]}` ({frozen})."]
            if s.logs.resumed_at:
                md += ["", f"Resumed at optimizer step(s) {s.logs.resumed_at}."]
            e = s.export
            md += [
                "",
                f"Export check: `SentenceTransformer(path).encode` vs mdistill's own forward on {e.checked} dev sentences, "
                f"max abs diff {e.max_abs_diff:.2e}.",
                "",
            ]
        if "training" in pngs:
            md += ["![training loss and dev metric over steps](training.png)", ""]

    if report.tune:
        md += tune_markdown(report.tune, "tune_trials" in pngs)
    return "\n".join(md).rstrip() + "\n"


def compression_markdown(report: RunReport) -> list[str]:
    """Size and speed of the teacher and the student (measured in the run), and what the student
    keeps of the teacher's own-space metrics per language, on the headline split."""
    from mdistill.evaluation.table import retained

    md = [
        "## Compression: size and speed",
        "",
        "| model | params | on disk | sentences/s | × teacher | measured on |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in report.speed.items():
        md.append(
            f"| {name} | {v.params / 1e6:.1f}M | {v.disk_mb:.1f} MB | {v.sentences_per_s:.0f} | {v.x_teacher:.2f} | "
            f"{v.sentences} sentences, batch {v.batch_size}, {v.threads} threads, {v.device} |"
        )
    split, table = ("held-out", report.heldout_metrics) if report.heldout_metrics else ("dev", report.metrics)
    students = [s for s in report.students if s in report.speed]
    if table and students and "teacher" in report.speed:
        md += ["", f"Kept of the teacher's own-space metrics ({split} split): student ÷ teacher per language.", ""]
        langs = sorted(table)
        md += ["| student | metric | " + " | ".join(langs) + " |", "|---|---|" + "---|" * len(langs)]
        for s in students:
            for metric, label in (("translation_top1_xx2en", "translation top-1 xx→en"), ("bitext_f1", "bitext F1")):
                kept = retained(table, s, "teacher", metric)
                md.append(f"| {s} | {label} | " + " | ".join(fmt(kept[lg]) for lg in langs) + " |")
    return md + [""]


def tune_markdown(tune, plot: bool = False) -> list[str]:
    md = [
        f"## Tune ({tune.metric}, {tune.mode})",
        "",
        "| trial | status | stopped early | iterations | best | config |",
        "|---|---|---|---|---|---|",
    ]
    for t in tune.trials:
        md.append(
            f"| {t.trial_id} | {t.status} | {'yes' if t.stopped_early else 'no'} | {t.iterations} | {fmt(t.best)} | `{json.dumps(t.config, default=str)}` |"
        )
    b, w = tune.best, tune.worst
    md += [
        "",
        f"{tune.num_trials} trials, {tune.stopped_early} stopped early. Best trial {b.trial_id} {fmt(b.best, '.4f')}, worst {w.trial_id} "
        f"{fmt(w.best, '.4f')}: gap {tune.gap:.4f} ({tune.metric}, best value of each trial). Best config: `{tune.best_config}`.",
        "",
    ]
    if plot:
        md += ["![tune trials](tune_trials.png)", ""]
    return md


def eval_markdown(result: EvalReport) -> str:
    from mdistill.plots import model_order

    models = model_order(result.metrics, result.baselines)
    md = [
        f"# mdistill eval: `{result.data}`" + (f" (split {result.split})" if result.split else ""),
        "",
        f"Teacher (baseline; its English vectors are the index for teacher-space top-1): `{result.teacher}`.",
        "",
        "| model | spec | dim |",
        "|---|---|---|",
        *[f"| {k} | `{v.spec}` | {v.dim} |" for k, v in result.models.items()],
        "",
        "## Summary (mean over languages)",
        "",
        summary_markdown(result.summary, models),
        "",
        "## Per language",
        "",
        metrics_markdown(result.metrics, models),
        "",
        "`–`: undefined (the model's dimension differs from the teacher's). Bitext F1: margin-based mining (k=4) on a pool of "
        "half the pairs plus distractors on both sides.",
        "",
        "![metrics per language](eval_metrics.png)",
    ]
    if result.sts:
        md += ["", f"## STS (`{result.sts['file']}`, {result.sts['n']} pairs)", "", "| model | Spearman | Pearson |", "|---|---|---|"]
        md += [f"| {k} | {v['spearman_cosine']:.4f} | {v['pearson_cosine']:.4f} |" for k, v in result.sts["models"].items()]
    return "\n".join(md) + "\n"


CLASSIFY_NOTES = {
    "teacher": "the English teacher applied to each language as it is",
    "zero_shot": "the student's encoder + a head trained on the English labels only (the standard transfer baseline)",
    "translate_train": "the student trained with the gold labels of every language (an upper bound: labels the user does not have)",
    "soft": "distilled: α·T²·KL(teacher ‖ student) + (1−α)·CE on the English source and every translation",
    "hard": "distilled: CE to the teacher's argmax",
    "online": "distilled while the teacher trains beside it (deep mutual learning; teacher logits computed in the loop, not cached)",
}


def classify_table_markdown(table: ClassifyTable) -> str:
    """One line per model, one column per language: accuracy / macro-F1."""
    langs = list(table)
    models = list(dict.fromkeys(m for row in table.values() for m in row))
    lines = [
        "| model | " + " | ".join(f"{lang} (n={next(iter(table[lang].values())).n})" for lang in langs) + " |",
        "|---|" + "---|" * len(langs),
    ]
    for m in models:
        cells = [f"{table[lang][m].accuracy:.3f} / {table[lang][m].macro_f1:.3f}" if m in table[lang] else "–" for lang in langs]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_classify_markdown(report: ClassifyReport, pngs: dict[str, Path] | None = None) -> str:
    pngs = pngs or {}
    c = report.config.get("classify", {})
    lines = [
        f"# mdistill classify run `{report.name}`",
        "",
        f"Task `{report.task}`: {len(report.labels)} labels ({', '.join(report.labels)}); teacher `{report.teacher}`; "
        f"finished {report.finished}, {report.total_s:.0f} s.",
        "",
        "## Test files: accuracy / macro-F1 per language",
        "",
        "Help files never trained on (split by file, not by paragraph).",
        "",
        classify_table_markdown(report.test),
        "",
        *[f"- `{m}`: {CLASSIFY_NOTES[m]}" for m in dict.fromkeys(m for row in report.test.values() for m in row) if m in CLASSIFY_NOTES],
        "",
    ]
    for check, per_lang in report.checks.items():
        lines.append(f"- check `{check}`: " + ", ".join(f"{lang} {'yes' if ok else 'NO'}" for lang, ok in per_lang.items()))
    if report.checks:
        lines.append("")
    for name in ("accuracy_by_language", "confusion_matrix", "training"):
        if name in pngs:
            lines += [f"![{name}]({pngs[name].name})", ""]
    if report.dev:
        lines += ["## Dev files: accuracy / macro-F1", "", classify_table_markdown(report.dev), ""]
    labels = report.labels
    lines += [
        "## Class balance (English paragraphs)",
        "",
        "| split | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
        *[f"| {s} (used) | " + " | ".join(str(report.balance[s][x]) for x in labels) + " |" for s in report.balance],
        *[f"| {s} (available) | " + " | ".join(str(report.available[s][x]) for x in labels) + " |" for s in report.available],
        "",
        f"Dropped English paragraphs: {report.dropped}. Rows per language: train {report.rows.get('train')}, eval {report.rows.get('eval')}.",
        f"Caps: classify.max_train_english {c.get('max_train_english')} (of them labelled: classify.labelled_english "
        f"{c.get('labelled_english') or 'all'}), max_eval_english {c.get('max_eval_english')}.",
        "",
        "## Classifiers",
        "",
        "| role | mode | base | train rows | languages | epochs | train layers | params | samples/s | export | export vs evaluated |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for role, r in report.classifiers.items():
        rate = f"{r.logs.history[-1].samples_per_s:.0f}" if r.logs.history else "–"
        diff = "–" if r.export_max_abs_diff is None else f"{r.export_max_abs_diff:.1e}"
        lines.append(
            f"| {role} | {r.mode} | `{Path(r.base).name}` | {r.train_rows} | {', '.join(r.languages)} | {r.epochs} | {r.train_layers} | "
            f"{r.params / 1e6:.1f}M | {rate} | `{r.export}` | {diff} |"
        )
    tc, sc = report.teacher_cache, report.states_cache
    lines += [
        "",
        f"Teacher logits cache `{tc.fingerprint[:12]}`: {tc.distinct_texts} texts, {tc.cache_hits} cached, {tc.computed} computed in {tc.seconds:.1f} s.",
        *(
            [
                f"Student frozen pass `{sc.fingerprint[:12]}` (states after the frozen layers, float16): {sc.distinct_texts} texts, "
                f"{sc.cache_hits} cached, {sc.computed} computed in {sc.seconds:.1f} s; export vs evaluated: max abs logit "
                "difference of each export loaded from text against the logits evaluated from the states."
            ]
            if sc
            else []
        ),
        "",
        *timings_markdown(report.timings_s),
    ]
    return "\n".join(lines)
