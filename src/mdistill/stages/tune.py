"""Tune stage: the pieces of ``mdistill tune`` that are not the recipe itself: the search
algorithm, the callback that turns dev reports into Tune iterations, the restore stamp, and the
results (typed trial summaries, a CSV, a terminal table). The pure config -> search-space
mapping is ``mdistill.tune_space``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator

from mdistill.config import RunConfig
from mdistill.log import get_logger
from mdistill.report.markdown import fmt
from mdistill.report.schema import TrialSummary, TuneReport

log = get_logger("tune")
TRIAL_RESOURCES = {"cpu": 0, "memory": 64 * 2**20}  # a trial's own bundle holds no CPU: its Train workers do
STARTS_FILE = "mdistill_starts.txt"  # one line per time a trial started (resume checks)
TRIAL_FILE = "mdistill_trial.json"  # what the trial computed: dev_every, expected reports, shape


class DevReportCallback(TuneReportCallback):
    """``TuneReportCallback`` that forwards only the reports carrying the tuned metric (the dev
    evaluations): one Tune iteration = one dev evaluation, ASHA's unit of time."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def search_algorithm(cfg: RunConfig, concurrent: int):
    """Random/grid: Ray's BasicVariantGenerator; optuna: OptunaSearch; at most ``concurrent`` trials at once
    (an explicit BasicVariantGenerator ignores ``TuneConfig.max_concurrent_trials``: it is given here)."""
    tc = cfg.tune
    seed = cfg.seed if tc.seed is None else tc.seed
    if tc.search == "optuna":
        try:
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise RuntimeError("tune.search: optuna needs the optuna package (pip install optuna), or use search: random / grid") from None
        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=concurrent)
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrent)


def fresh_or_restore(experiment: Path, base: dict) -> None:
    """Keep an interrupted search for ``Tuner.restore`` only if it was started with the same
    settings (everything but the outcome-neutral sections); otherwise start afresh."""
    keep = {k: v for k, v in base.items() if k not in ("ray", "job", "registry", "schedule", "tracking")}
    keep["tune"] = {k: v for k, v in (base["tune"] or {}).items() if k != "retrain_best"}
    wanted = json.dumps(keep, sort_keys=True, default=str)
    stamp = experiment.parent / f"{experiment.name}.mdistill_settings.json"
    if experiment.exists() and (not stamp.exists() or stamp.read_text() != wanted):
        log.info("settings changed, starting %s afresh", experiment)
        shutil.rmtree(experiment)
    experiment.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted)


def trial_summary(result, metric: str, mode: str, max_t: int) -> TrialSummary:
    """One trial: sampled config, status, its metric per iteration, final and best value, stopped early or not."""
    df = result.metrics_dataframe
    history = []
    if df is not None and metric in df:
        for _, row in df.dropna(subset=[metric]).iterrows():
            extra = {k: float(row[k]) for k in ("step", "epoch", "loss", "time_total_s") if k in row and row[k] == row[k]}
            history.append({"training_iteration": float(row["training_iteration"]), metric: float(row[metric]), **extra})
    vals = [h[metric] for h in history]
    trial_dir = Path(result.path)
    info = json.loads((trial_dir / TRIAL_FILE).read_text()) if (trial_dir / TRIAL_FILE).exists() else {}
    starts = (trial_dir / STARTS_FILE).read_text().split() if (trial_dir / STARTS_FILE).exists() else []
    iterations = int(max((h["training_iteration"] for h in history), default=0))
    return TrialSummary(
        trial_id=str((result.metrics or {}).get("trial_id") or trial_dir.name.split("_")[1]),
        config=dict(result.config or {}),
        status="ERROR" if result.error else "TERMINATED",
        error=str(result.error).splitlines()[0] if result.error else None,
        iterations=iterations,
        stopped_early=result.error is None and iterations < max_t,
        final=vals[-1] if vals else None,
        best=(max(vals) if mode == "max" else min(vals)) if vals else None,
        time_s=history[-1].get("time_total_s") if history else None,
        dev_every=info.get("dev_every"),
        starts=len(starts),
        history=history,
        path=str(trial_dir),
    )


def write_results_csv(path: Path, trials: list[TrialSummary], keys: list[str]) -> None:
    cols = ["trial_id", "status", "stopped_early", "iterations", "final", "best", "time_s"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*cols, *keys])
        for t in trials:
            w.writerow([getattr(t, c) for c in cols] + [t.config.get(k) for k in keys])


def results_markdown(t: TuneReport) -> str:
    """The results table (best first) and the best/worst gap, for the terminal."""
    keys = list(t.trials[0].config) if t.trials else []
    order = sorted(t.trials, key=lambda x: (x.best is None, -(x.best or 0) if t.mode == "max" else (x.best or 0)))
    lines = [
        f"| trial | status | stopped early | iterations | final {t.metric} | best | time s | " + " | ".join(keys) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(keys),
    ]
    for x in order:
        lines.append(
            f"| {x.trial_id} | {x.status} | {'yes' if x.stopped_early else 'no'} | {x.iterations} | {fmt(x.final, '.4f')} | "
            f"{fmt(x.best, '.4f')} | {fmt(x.time_s, '.0f')} | " + " | ".join(fmt(x.config.get(k), ".3g") for k in keys) + " |"
        )
    lines += [
        "",
        f"{t.num_trials} trials, {t.stopped_early} stopped early by ASHA; best {t.best.trial_id} {t.best.best:.4f}, "
        f"worst {t.worst.trial_id} {t.worst.best:.4f}, gap {t.gap:.4f} ({t.metric}, {t.mode}).",
    ]
    return "\n".join(lines)


def search_results(
    grid, cfg: RunConfig, *, base: dict, experiment: Path, out: Path, concurrent: int, max_t: int, shapes: dict
) -> TuneReport:
    """A finished search as a ``TuneReport``: every trial summarised, best and worst, the best
    trial's config as a runnable ``best_config.yaml`` and the results as ``tune_results.csv``."""
    import yaml

    from mdistill.tune_space import trial_config

    tc = cfg.tune
    trials = [trial_summary(r, tc.metric, tc.mode, max_t) for r in grid]
    scored = [t for t in trials if t.best is not None]
    if not scored:
        raise RuntimeError(f"no trial reported {tc.metric}; see {experiment}")
    best = (max if tc.mode == "max" else min)(scored, key=lambda t: t.best)
    worst = (min if tc.mode == "max" else max)(scored, key=lambda t: t.best)
    best_cfg = trial_config(base | {"name": f"{cfg.name}-best", "output_dir": "runs/{name}", "tune": None}, best.config)
    best_file = out / "best_config.yaml"
    best_file.write_text(
        f"# best trial {best.trial_id} of `mdistill tune` {cfg.name}: {tc.metric} {best.best:.4f}\n"
        + yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    )
    write_results_csv(out / "tune_results.csv", trials, list(tc.space))
    return TuneReport(
        metric=tc.metric, mode=tc.mode, search=tc.search, num_trials=len(trials), max_concurrent_trials=concurrent, max_t=max_t,
        stopped_early=sum(t.stopped_early for t in trials), experiment=str(experiment), shapes=shapes,
        trials=trials, best=best, worst=worst, gap=abs(best.best - worst.best), best_config=str(best_file),
        results_csv=str(out / "tune_results.csv"),
    )  # fmt: skip


def tune_config(cfg: RunConfig, concurrent: int, max_t: int):
    """``tune.TuneConfig`` of a search: the metric, the search algorithm and ASHA on Tune
    iterations (one per dev report; ``scheduler.asha: null``: FIFO, no early stopping)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tc, asha = cfg.tune, cfg.tune.scheduler.asha
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration", max_t=max_t, grace_period=min(asha.grace_period, max_t), reduction_factor=asha.reduction_factor
        )
        if asha
        else FIFOScheduler()
    )
    return tune.TuneConfig(
        metric=tc.metric, mode=tc.mode, search_alg=search_algorithm(cfg, concurrent), scheduler=scheduler, num_samples=tc.num_samples
    )
