"""Hyper-parameter search: ``mdistill tune configs/tune-small.yaml``.

corpus -> teacher (cached) -> one frozen pass per distinct student shape in the space (cached)
-> Ray Tune: every trial trains a student on Ray Train (Tune over Train V2: the trial is a
function that builds a ``TorchTrainer`` and calls ``fit()``; a ``TuneReportCallback`` on the
trainer forwards its dev reports to Tune) with ASHA stopping the weak ones -> results table,
``best_config.yaml``, report with a per-trial plot -> optionally ``mdistill run`` of the best.

Every trial reads the same teacher vectors and frozen states (prepared here, before Tune starts),
so trials only train. An interrupted search resumes with ``Tuner.restore``: finished trials keep
their results and are not run again.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import ray
import ray.train
import torch
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator

from mdistill.config import RunConfig
from mdistill.pipelines.run import prepare, prepare_student
from mdistill.pipelines.train import train_student
from mdistill.ray_init import init_ray
from mdistill.report import Timings, write_report
from mdistill.tune_space import (
    derive_max_concurrent_trials,
    dev_every,
    search_space,
    shape_key,
    student_shapes,
    trial_config,
)

TRIAL_RESOURCES = {"cpu": 0, "memory": 64 * 2**20}  # a trial's own bundle holds no CPU: its Train workers do
STARTS_FILE = "mdistill_starts.txt"  # one line per time a trial started (resume checks)
TRIAL_FILE = "mdistill_trial.json"  # what the trial computed: dev_every, total steps, expected reports


def tune_run(cfg: RunConfig) -> dict:
    t_start = time.time()
    tc = cfg.tune
    if tc is None:
        raise ValueError("the config has no tune: section")
    if cfg.students:
        raise ValueError("mdistill tune searches one student: remove the students: list")
    if cfg.teacher.kind != "embedding":
        raise ValueError("mdistill tune trains embedding students only (teacher.kind: embedding)")
    out = cfg.output_path
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings()
    torch.manual_seed(cfg.seed)
    init_ray(cfg.ray)
    base = cfg.model_dump()

    # 1-2. Corpus and teacher vectors, once for every trial.
    data = prepare(cfg, timings)

    # 3. One frozen pass per distinct student shape of the space, before Tune starts: trials only train.
    shapes = {}
    with timings.stage("student_frozen_pass"):
        for values in student_shapes(cfg):
            key = shape_key(values)
            scfg = trial_config(base, values).student
            p = prepare_student(cfg, key, scfg, data["rows"], out / "tune_prep" / key / "states")
            dense_path = None
            if p["dense"] is not None:
                dense_path = out / "tune_prep" / key / "dense_init.pt"
                torch.save(p["dense"], dense_path)
            shapes[key] = dict(
                student_path=p["built"]["path"],
                states_dir=str(p["states_dir"]),
                dense_path=str(dense_path) if dense_path else None,
                train_rows=p["train_rows"],
                states_cache=p["states_stats"],
            )

    # 4. The search: Tune over Train, ASHA on the dev metric, resumed if it was interrupted.
    concurrent = tc.max_concurrent_trials or derive_max_concurrent_trials(ray.cluster_resources(), cfg.train.workers, cfg.train.use_gpu)
    max_t = (tc.scheduler.asha.max_t or tc.reports) if tc.scheduler.asha else tc.reports
    print(f"[mdistill] tune: {tc.num_samples} sample(s), {concurrent} trial(s) at once, ASHA max_t {max_t}", flush=True)
    trainable = tune.with_resources(
        tune.with_parameters(distill_trial, base=base, shapes=shapes, metric=tc.metric, reports=tc.reports, concurrent=concurrent),
        TRIAL_RESOURCES,
    )
    storage = out / "tune"
    experiment = storage / cfg.name
    fresh_or_restore(experiment, base)
    if tune.Tuner.can_restore(str(experiment)):
        print(f"[mdistill] tune: resuming {experiment} (finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(tc),
            tune_config=tune.TuneConfig(
                metric=tc.metric,
                mode=tc.mode,
                search_alg=search_algorithm(cfg, concurrent),
                scheduler=(
                    ASHAScheduler(
                        time_attr="training_iteration",
                        max_t=max_t,
                        grace_period=min(tc.scheduler.asha.grace_period, max_t),
                        reduction_factor=tc.scheduler.asha.reduction_factor,
                    )
                    if tc.scheduler.asha
                    else FIFOScheduler()
                ),
                num_samples=tc.num_samples,
            ),
            run_config=tune.RunConfig(name=cfg.name, storage_path=str(storage)),
        )
    with timings.stage("tune"):
        grid = tuner.fit()

    # 5. Results: every trial's history, best and worst, the best config as a runnable file.
    trials = [trial_summary(r, tc.metric, tc.mode, max_t) for r in grid]
    scored = [t for t in trials if t["best"] is not None]
    if not scored:
        raise RuntimeError(f"no trial reported {tc.metric}; see {experiment}")
    pick = max if tc.mode == "max" else min
    best, worst = pick(scored, key=lambda t: t["best"]), (min if tc.mode == "max" else max)(scored, key=lambda t: t["best"])
    best_cfg = trial_config(base | {"name": f"{cfg.name}-best", "output_dir": "runs/{name}", "tune": None}, best["config"])
    (out / "best_config.yaml").write_text(
        f"# best trial {best['trial_id']} of `mdistill tune` {cfg.name}: {tc.metric} {best['best']:.4f}\n"
        + yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    )
    write_results_csv(out / "tune_results.csv", trials, list(tc.space))

    report = {
        "config": base,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_s": round(time.time() - t_start, 1),
        "timings_s": dict(timings),
        "corpus": {k: v for k, v in data["manifest"].items() if k != "files"},
        "corpus_dir": str(data["corpus_dir"]),
        "data": {
            "train_pairs": data["train"].groupby("lang").size().to_dict(),
            "train_english": int(data["train"].en.nunique()),
            "dev_pairs": data["dev"].groupby("lang").size().to_dict(),
            "student_rows": data["rows"].num_rows,
        },
        "teacher_cache": data["cache_stats"],
        "tune": {
            "metric": tc.metric,
            "mode": tc.mode,
            "search": tc.search,
            "num_trials": len(trials),
            "max_concurrent_trials": concurrent,
            "max_t": max_t,
            "stopped_early": sum(t["stopped_early"] for t in trials),
            "experiment": str(experiment),
            "shapes": {k: {"states_cache": v["states_cache"], "train_rows": v["train_rows"]} for k, v in shapes.items()},
            "trials": trials,
            "best": best,
            "worst": worst,
            "gap": abs(best["best"] - worst["best"]),
            "best_config": str(out / "best_config.yaml"),
            "results_csv": str(out / "tune_results.csv"),
        },
    }

    # 6. Optionally: the best config trained on the full data and exported like any student.
    if tc.retrain_best:
        from mdistill.pipelines.run import run

        with timings.stage("retrain_best"):
            retrained = run(best_cfg)
        report["tune"]["retrained"] = {"output_dir": str(best_cfg.output_path), "summary": retrained["summary"]}
        report["timings_s"] = dict(timings)
        report["total_s"] = round(time.time() - t_start, 1)
    write_report(out, report)
    print(results_markdown(report["tune"]), flush=True)
    return report


def distill_trial(config: dict, *, base: dict, shapes: dict, metric: str, reports: int, concurrent: int) -> None:
    """One trial (a Tune function trainable): the base config + the sampled values, trained by a
    ``TorchTrainer`` whose dev reports reach Tune through ``TuneReportCallback``."""
    # The trial's folder in the experiment's storage (not the session's working copy): Train's
    # checkpoints go there, so a restored search finds them; so do the start marks.
    storage = tune.get_context().get_storage()
    trial_dir = Path(storage.trial_fs_path)
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / STARTS_FILE, "a") as f:
        f.write(f"{time.time()}\n")
    cfg = trial_config(base, config)
    shape = shapes[shape_key(config)]
    t = cfg.train
    every = dev_every(shape["train_rows"], t.workers, t.batch_size, t.bucket_rows, t.epochs, t.grad_accum, reports)
    t = t.model_copy(update={"dev_every": every, "checkpoint_every": None})
    (trial_dir / TRIAL_FILE).write_text(json.dumps({"dev_every": every, "reports": reports, "shape": shape_key(config)}))
    trainer = train_student(
        "student", cfg.student, t, seed=cfg.seed, student_path=shape["student_path"], states_dir=Path(shape["states_dir"]),
        train_rows=shape["train_rows"], dense=shape["dense_path"], run_dir=trial_dir, concurrent=concurrent,
        callbacks=[DevReportCallback(metric)],
    )  # fmt: skip
    trainer.fit()


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
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as e:  # ray's module imports fine; optuna itself is checked below
            raise RuntimeError("tune.search: optuna needs the optuna package: pip install optuna") from e
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise RuntimeError("tune.search: optuna needs the optuna package (pip install optuna), or use search: random / grid") from None
        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=concurrent)
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrent)


def fresh_or_restore(experiment: Path, base: dict) -> None:
    """Keep an interrupted search for ``Tuner.restore`` only if it was started with the same
    settings (everything but the outcome-neutral sections); otherwise start afresh."""
    keep = {k: v for k, v in base.items() if k not in ("ray", "job", "registry", "schedule")}
    keep["tune"] = {k: v for k, v in (base["tune"] or {}).items() if k != "retrain_best"}
    wanted = json.dumps(keep, sort_keys=True, default=str)
    stamp = experiment.parent / f"{experiment.name}.mdistill_settings.json"
    if experiment.exists() and (not stamp.exists() or stamp.read_text() != wanted):
        print(f"[mdistill] tune: settings changed, starting {experiment} afresh", flush=True)
        shutil.rmtree(experiment)
    experiment.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted)


def trial_summary(result, metric: str, mode: str, max_t: int) -> dict:
    """One trial: sampled config, status, its metric per iteration, final and best value, stopped early or not."""
    df = result.metrics_dataframe
    history = []
    if df is not None and metric in df:
        for _, row in df.dropna(subset=[metric]).iterrows():
            history.append(
                {
                    "training_iteration": int(row["training_iteration"]),
                    metric: float(row[metric]),
                    **{k: float(row[k]) for k in ("step", "epoch", "loss", "time_total_s") if k in row and row[k] == row[k]},
                }
            )
    vals = [h[metric] for h in history]
    trial_dir = Path(result.path)
    info = json.loads((trial_dir / TRIAL_FILE).read_text()) if (trial_dir / TRIAL_FILE).exists() else {}
    starts = (trial_dir / STARTS_FILE).read_text().split() if (trial_dir / STARTS_FILE).exists() else []
    iterations = max((h["training_iteration"] for h in history), default=0)
    return {
        "trial_id": (result.metrics or {}).get("trial_id") or trial_dir.name.split("_")[1],
        "config": dict(result.config or {}),
        "status": "ERROR" if result.error else "TERMINATED",
        "error": str(result.error).splitlines()[0] if result.error else None,
        "iterations": iterations,
        "stopped_early": result.error is None and iterations < max_t,
        "final": vals[-1] if vals else None,
        "best": (max(vals) if mode == "max" else min(vals)) if vals else None,
        "time_s": history[-1].get("time_total_s") if history else None,
        "dev_every": info.get("dev_every"),
        "starts": len(starts),
        "history": history,
        "path": str(trial_dir),
    }


def write_results_csv(path: Path, trials: list[dict], keys: list[str]) -> None:
    cols = ["trial_id", "status", "stopped_early", "iterations", "final", "best", "time_s", *keys]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for t in trials:
            w.writerow([t[c] for c in cols[:7]] + [t["config"].get(k) for k in keys])


def results_markdown(t: dict) -> str:
    """The results table (best first) and the best/worst gap, for the terminal."""
    keys = list(t["trials"][0]["config"]) if t["trials"] else []
    order = sorted(t["trials"], key=lambda x: (x["best"] is None, -(x["best"] or 0) if t["mode"] == "max" else (x["best"] or 0)))
    lines = [
        f"| trial | status | stopped early | iterations | final {t['metric']} | best | time s | " + " | ".join(keys) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(keys),
    ]
    f = lambda v, spec=".4f": "–" if v is None else format(v, spec) if isinstance(v, float) else str(v)  # noqa: E731
    for x in order:
        lines.append(
            f"| {x['trial_id']} | {x['status']} | {'yes' if x['stopped_early'] else 'no'} | {x['iterations']} | {f(x['final'])} | "
            f"{f(x['best'])} | {f(x['time_s'], '.0f')} | " + " | ".join(f(x["config"].get(k), ".3g") for k in keys) + " |"
        )
    lines += [
        "",
        f"{t['num_trials']} trials, {t['stopped_early']} stopped early by ASHA; best {t['best']['trial_id']} {t['best']['best']:.4f}, "
        f"worst {t['worst']['trial_id']} {t['worst']['best']:.4f}, gap {t['gap']:.4f} ({t['metric']}, {t['mode']}).",
    ]
    return "\n".join(lines)
