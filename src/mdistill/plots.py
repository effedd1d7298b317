"""PNG plots of a run or an evaluation (matplotlib's object API on the Agg canvas: no pyplot, no
global backend switch, safe in any process).

- ``metrics_by_language``: grouped bars per language, one bar per model (baselines hatched).
- ``training_curves``: training loss and the dev metric over steps, one line per student.
- ``tune_trials``: the tuned metric per trial over iterations.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

METRIC_LABELS = {
    "teacher_space_top1": "teacher-space top-1\n(model(xx) → nearest teacher(en))",
    "translation_top1_xx2en": "translation top-1 xx→en",
    "translation_top1_en2xx": "translation top-1 en→xx",
    "mse100": "MSE×100 to the teacher (lower is better)",
    "bitext_f1": "bitext mining F1 (margin, with distractors)",
    "spearman_cosine": "STS Spearman (cosine)",
}
BOUNDED = {"teacher_space_top1", "translation_top1_xx2en", "translation_top1_en2xx", "bitext_f1"}


def _save(fig: Figure, out: str | Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return Path(out)


def model_order(table: dict, baselines: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Models of a ``{lang: {"n": n, model: {...}}}`` table: baselines first, then the rest in order of appearance."""
    seen = [m for row in table.values() for m, v in row.items() if isinstance(v, dict)]
    seen = list(dict.fromkeys(seen))
    return [b for b in baselines if b in seen] + [m for m in seen if m not in baselines]


def metrics_by_language(
    table: dict,
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
                v = table[lang].get(model, {}).get(metric)
                if v is not None:
                    xs.append(x - 0.4 + width * (i + 0.5))
                    ys.append(v)
                elif model in table[lang]:  # undefined (e.g. dimension differs from the teacher's): say so
                    ax.text(x - 0.4 + width * (i + 0.5), 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
            bars = ax.bar(xs, ys, width, label=model, color=colors[i], hatch="//" if model in baselines else None, edgecolor="white")
            if len(langs) * len(models) <= 40:  # values on the bars while they stay legible
                ax.bar_label(bars, fmt="%.2f" if metric in BOUNDED else "%.3g", fontsize=7, padding=1)
        ax.set_xticks(range(len(langs)), [f"{lang}\n(n={table[lang].get('n', '?')})" for lang in langs])
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


def training_curves(students: dict, out: str | Path, *, dev_metric: str = "teacher_space_top1") -> Path:
    """Left: training loss over optimiser steps; right: the dev metric over steps; one line per student.

    ``students[name]``: ``{"steps": [{"step", "loss"}], "history": [{"step", "loss", "epoch"}], "dev": [{"step", dev_metric}]}``
    (``steps`` preferred for the loss; the per-epoch ``history`` otherwise)."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_loss, ax_dev = fig.subplots(1, 2)
    any_dev, losses, x_key = False, [], "step"
    series = {name: s.get("steps") or s.get("history") or [] for name, s in students.items()}
    if not any(p.get("step") is not None for pts in series.values() for p in pts):
        x_key = "epoch"  # a history without step counts: loss per epoch
    for i, (name, s) in enumerate(students.items()):
        pts = [(p[x_key], p["loss"]) for p in series[name] if p.get(x_key) is not None and p.get("loss") is not None]
        losses += [v for _, v in pts]
        if pts:
            ax_loss.plot(*zip(*pts), marker="." if len(pts) < 50 else None, color=f"C{i % 10}", label=name)
        dev = [(p["step"], p[dev_metric]) for p in s.get("dev") or [] if p.get(dev_metric) is not None]
        if dev:
            any_dev = True
            ax_dev.plot(*zip(*dev), marker="o", color=f"C{i % 10}", label=name)
    ax_loss.set(
        title="Training loss", xlabel="optimiser step" if x_key == "step" else "epoch", ylabel="loss (mean over the logging window)"
    )
    if x_key == "epoch":
        ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:  # log only when the loss spans decades
        ax_loss.set_yscale("log")
    ax_dev.set(title=f"Dev {METRIC_LABELS.get(dev_metric, dev_metric).splitlines()[0]}", xlabel="optimiser step", ylabel=dev_metric)
    if not any_dev:
        ax_dev.text(0.5, 0.5, "no dev evaluations recorded", ha="center", va="center", transform=ax_dev.transAxes)
    for ax in (ax_loss, ax_dev):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="student", fontsize=8)
    return _save(fig, out)


def tune_trials(tune: dict, out: str | Path) -> Path:
    """The tuned metric per trial over training iterations (best trial drawn thick; stopped-early trials dashed).

    ``tune``: ``{"metric", "mode", "trials": [{"trial_id", "status", "stopped_early", "history": [{"training_iteration", metric}]}]}``"""
    metric, mode = tune.get("metric", "metric"), tune.get("mode", "max")
    trials = tune.get("trials") or []
    finals = {t["trial_id"]: [h[metric] for h in t.get("history") or [] if h.get(metric) is not None] for t in trials}
    scored = {k: (max(v) if mode == "max" else min(v)) for k, v in finals.items() if v}
    best = (max if mode == "max" else min)(scored, key=scored.get) if scored else None
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, t in enumerate(trials):
        pts = [(h["training_iteration"], h[metric]) for h in t.get("history") or [] if h.get(metric) is not None]
        if not pts:
            continue
        label = f"{t['trial_id']} ({t.get('status', '?')}{', stopped early' if t.get('stopped_early') else ''})"
        ax.plot(
            *zip(*pts),
            marker="o",
            color=f"C{i % 10}",
            lw=3 if t["trial_id"] == best else 1.3,
            ls="--" if t.get("stopped_early") else "-",
            label=label + (" best" if t["trial_id"] == best else ""),
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=f"Tune trials: {metric} ({mode})", xlabel="training iteration", ylabel=METRIC_LABELS.get(metric, metric).splitlines()[0])
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="trial", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out)
