"""PNG plots of a run or an evaluation (matplotlib's object API on the Agg canvas: no pyplot, no
global backend switch, safe in any process).

- ``metrics_by_language``: grouped bars per language, one bar per model (baselines hatched).
- ``training_curves``: training loss and the dev metric over steps, one line per student.
- ``tune_trials``: the tuned metric per trial over iterations.
- ``classify_by_language``: test accuracy per language, one bar per classifier.
- ``confusion_matrix``: a classifier's true-vs-predicted counts, row-normalised colours.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from mdistill.report.schema import ClassifyTable, MetricsTable, TrainLogs, TuneReport

METRIC_LABELS = {
    "teacher_space_top1": "teacher-space top-1\n(model(xx) → nearest teacher(en))",
    "translation_top1_xx2en": "translation top-1 xx→en",
    "translation_top1_en2xx": "translation top-1 en→xx",
    "mse100": "MSE×100 to the teacher (lower is better)",
    "bitext_f1": "bitext mining F1 (margin, with distractors)",
    "spearman_cosine": "STS Spearman (cosine)",
    "pooled_teacher_space_top1": "teacher-space top-1, dev rows of every language pooled",
}
BOUNDED = {"teacher_space_top1", "translation_top1_xx2en", "translation_top1_en2xx", "bitext_f1"}


def _save(fig: Figure, out: str | Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return Path(out)


def model_order(table: MetricsTable, baselines: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Models of a metrics table: baselines first, then the rest in order of appearance."""
    seen = list(dict.fromkeys(m for row in table.values() for m in row.models))
    return [b for b in baselines if b in seen] + [m for m in seen if m not in baselines]


def metrics_by_language(
    table: MetricsTable,
    out: str | Path,
    *,
    metrics: tuple[str, ...] = ("teacher_space_top1",),
    baselines: list[str] | tuple[str, ...] = (),
    title: str = "",
) -> Path:
    """One panel per metric: x = languages (with their number of pairs), one bar per model."""
    langs = sorted(table)
    models = model_order(table, baselines)
    fig = Figure(figsize=(min(20.0, max(7.0, 0.38 * len(langs) * max(1, len(models)) + 3)), 3.6 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    colors = [f"C{i % 10}" for i in range(len(models))]
    width = 0.8 / max(1, len(models))
    for n_ax, (ax, metric) in enumerate(zip(axes, metrics)):
        for i, model in enumerate(models):
            xs, ys = [], []
            for x, lang in enumerate(langs):
                m = table[lang].models.get(model)
                v = getattr(m, metric) if m is not None else None
                if v is not None:
                    xs.append(x - 0.4 + width * (i + 0.5))
                    ys.append(v)
                elif m is not None:  # undefined (e.g. dimension differs from the teacher's): say so
                    ax.text(x - 0.4 + width * (i + 0.5), 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
            bars = ax.bar(xs, ys, width, label=model, color=colors[i], hatch="//" if model in baselines else None, edgecolor="white")
            if len(langs) * len(models) <= 40:  # values on the bars while they stay legible
                ax.bar_label(bars, fmt="%.2f" if metric in BOUNDED else "%.3g", fontsize=7, padding=1)
        ax.set_xticks(range(len(langs)), [f"{lang}\n(n={table[lang].n})" for lang in langs])
        if n_ax == len(metrics) - 1:
            ax.set_xlabel("language (number of pairs)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        if metric in BOUNDED:
            ax.set_ylim(0, 1.12)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        # explicit handles: a model with no defined value in this panel still gets its swatch
        handles = [
            Patch(facecolor=colors[i], edgecolor="white", hatch="//" if m in baselines else None, label=m) for i, m in enumerate(models)
        ]
        if n_ax == 0:
            ax.legend(
                handles=handles,
                title="model (hatched: baseline)",
                fontsize=8,
                title_fontsize=8,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
            )
    axes[0].set_title(title or "Per-language metrics: every model")
    return _save(fig, out)


def training_curves(students: dict[str, TrainLogs], out: str | Path) -> Path:
    """Left: training loss over optimiser steps; right: the pooled dev metric over steps; one line per student.
    The loss is the logging window's (``steps``), or the epoch's (``history``) when no window was logged."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_loss, ax_dev = fig.subplots(1, 2)
    any_dev, losses = False, []
    for i, (name, logs) in enumerate(students.items()):
        pts = [(p.step, p.loss) for p in logs.steps] or [(p.step, p.loss) for p in logs.history]
        losses += [v for _, v in pts]
        if pts:
            ax_loss.plot(*zip(*pts), marker="." if len(pts) < 50 else None, color=f"C{i % 10}", label=name)
        dev = [(p.step, p.pooled_teacher_space_top1) for p in logs.dev]
        if dev:
            any_dev = True
            ax_dev.plot(*zip(*dev), marker="o", color=f"C{i % 10}", label=name)
    ax_loss.set(title="Training loss", xlabel="optimiser step", ylabel="loss (mean over the logging window)")
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:  # log only when the loss spans decades
        ax_loss.set_yscale("log")
    ax_dev.set(title="Dev teacher-space top-1 (every language pooled)", xlabel="optimiser step", ylabel="pooled_teacher_space_top1")
    if not any_dev:
        ax_dev.text(0.5, 0.5, "no dev evaluations recorded", ha="center", va="center", transform=ax_dev.transAxes)
    for ax in (ax_loss, ax_dev):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="student", fontsize=8)
    return _save(fig, out)


def tune_trials(tune: TuneReport, out: str | Path) -> Path:
    """The tuned metric per trial over training iterations (best trial drawn thick; stopped-early trials dashed)."""
    metric, mode, trials = tune.metric, tune.mode, tune.trials
    finals = {t.trial_id: [h[metric] for h in t.history if h.get(metric) is not None] for t in trials}
    scored = {k: (max(v) if mode == "max" else min(v)) for k, v in finals.items() if v}
    best = (max if mode == "max" else min)(scored, key=scored.get) if scored else None
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, t in enumerate(trials):
        pts = [(h["training_iteration"], h[metric]) for h in t.history if h.get(metric) is not None]
        if not pts:
            continue
        label = f"{t.trial_id} ({t.status}{', stopped early' if t.stopped_early else ''})"
        ax.plot(
            *zip(*pts),
            marker="o",
            color=f"C{i % 10}",
            lw=3 if t.trial_id == best else 1.3,
            ls="--" if t.stopped_early else "-",
            label=label + (" best" if t.trial_id == best else ""),
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=f"Tune trials: {metric} ({mode})", xlabel="training iteration", ylabel=METRIC_LABELS.get(metric, metric).splitlines()[0])
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="trial", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out)


def classify_by_language(table: ClassifyTable, out: str | Path, *, title: str = "") -> Path:
    """x = languages (rows per language), one bar per classifier (the teacher and baselines hatched), accuracy."""
    langs = list(table)
    models = list(dict.fromkeys(m for row in table.values() for m in row))
    fig = Figure(figsize=(min(20.0, max(7.0, 0.3 * len(langs) * len(models) + 3)), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(langs))]
        ys = [table[lang][model].accuracy if model in table[lang] else 0.0 for lang in langs]
        hatch = "//" if model in ("teacher", "zero_shot", "translate_train") else None
        ax.bar(xs, ys, width, color=f"C{i % 10}", hatch=hatch, label=model, edgecolor="white" if hatch else None)
    ax.set_xticks(range(len(langs)), [f"{lang}\n(n={next(iter(table[lang].values())).n})" for lang in langs])
    ax.set(ylim=(0, 1), ylabel="accuracy", title=title or "test accuracy per language")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(6, len(models)), loc="lower center")
    return _save(fig, out)


def confusion_matrix(counts: list[list[int]], labels: list[str], out: str | Path, *, title: str = "") -> Path:
    """Rows: true label, columns: predicted; colour = the share of the row, text = the count."""
    import numpy as np

    cm = np.asarray(counts, dtype=float)
    share = cm / np.maximum(1, cm.sum(1, keepdims=True))
    fig = Figure(figsize=(1.0 * len(labels) + 2.5, 0.8 * len(labels) + 1.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, label="share of the true label's rows")
    return _save(fig, out)
