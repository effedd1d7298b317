"""The driver's side of experiment tracking: one MLflow run and one TensorBoard folder per recipe run.

``RunTracker(cfg, timings, recipe=...)`` opens them before any compute (a wrong URI or a missing
package stops the run there), logs each stage's seconds as the stage ends (a stage that raises
ends the run FAILED), hands each training the ``WorkerTracking`` its rank-0 worker logs per-step
metrics with (``training``), and at the end logs the report (``finish``): the final per-language
tables as metrics and MLflow tables, the report files and the exported model(s) as artifacts.
The driver talks to MLflow through ``MlflowClient`` with explicit run ids (Ray's ``setup_mlflow``
is for trainables); nothing is imported until a tracker is switched on.
"""

from __future__ import annotations

import atexit
import json
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from mdistill.config import RunConfig
from mdistill.log import get_logger
from mdistill.tracking.spec import WorkerTracking

log = get_logger("tracking")
MAX_PARAM_CHARS = 6000  # MLflow's longest param value
REPORT_FILES = ("report.json", "report.md", "*.png", "tune_results.csv", "best_config.yaml")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.lr": 0.0005, ...}``: the keys the command line's overrides use."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def table_rows(report) -> dict[str, list[dict[str, Any]]]:
    """A report's final per-language tables as rows ``{lang, model, n, <metric>: value}`` per split:
    dev (in-domain) and heldout (out-of-domain) for the embedding recipes, test and dev for classify."""
    from mdistill.report.schema import ClassifyReport

    if isinstance(report, ClassifyReport):
        tables = {"test": report.test, "dev": report.dev}
        return {
            split: [{"lang": lang, "model": model, **m.model_dump()} for lang, models in t.items() for model, m in models.items()]
            for split, t in tables.items()
            if t
        }
    tables = {"dev": report.metrics, "heldout": report.heldout_metrics}
    return {
        split: [{"lang": lang, "model": model, "n": row.n, **m.model_dump()} for lang, row in t.items() for model, m in row.models.items()]
        for split, t in tables.items()
        if t
    }


def final_metrics(rows: dict[str, list[dict[str, Any]]], model: str | None = None) -> dict[str, float]:
    """``{split}/{lang}/{model}/{metric}`` and the mean over languages ``{split}/mean/{model}/{metric}``;
    with ``model``, that model's rows only and without the model in the key (its own run)."""
    out: dict[str, float] = {}
    for split, split_rows in rows.items():
        sums: dict[str, list[float]] = {}
        for row in split_rows:
            if model is not None and row["model"] != model:
                continue
            who = "" if model is not None else f"{row['model']}/"
            for metric, value in row.items():
                if metric in ("lang", "model", "n") or value is None:
                    continue
                out[f"{split}/{row['lang']}/{who}{metric}"] = float(value)
                sums.setdefault(f"{split}/mean/{who}{metric}", []).append(float(value))
        out |= {key: sum(v) / len(v) for key, v in sums.items()}
    return out


def exported_models(report) -> dict[str, Path]:
    """Each exported model of a report, by the name its training ran under."""
    from mdistill.report.schema import ClassifyReport

    if isinstance(report, ClassifyReport):
        return {role: Path(c.export) for role, c in report.classifiers.items() if c.export}
    return {name: Path(s.export.path) for name, s in report.students.items()}


def search_metrics(report) -> dict[str, float]:
    """A Tune search's outcome (its trials are child runs with their own metrics)."""
    t = getattr(report, "tune", None)
    if t is None:
        return {}
    return {
        "tune/best": t.best.best,
        "tune/worst": t.worst.best,
        "tune/gap": t.gap,
        "tune/trials": t.num_trials,
        "tune/stopped_early": t.stopped_early,
    }


class RunTracker:
    def __init__(self, cfg: RunConfig, timings, *, recipe: str, run_file: Path | None = None, resume: bool = False):
        """``run_file`` keeps the MLflow run's id; with ``resume`` the run it names is continued (an
        interrupted Tune search restored: its trials' callbacks point at that run)."""
        self.cfg, self.recipe = cfg, recipe
        self.client = self.uri = self.run_id = self.experiment_id = self.tb = self.tb_dir = None
        self.children: dict[str, str] = {}  # training name -> its MLflow child run
        self.done = False
        if cfg.tracking.mlflow is not None:
            self._open_mlflow(run_file, resume)
        if cfg.tracking.tensorboard is not None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise RuntimeError("tracking.tensorboard needs tensorboardX: pip install 'mdistill[tracking]'") from None
            t = cfg.tracking.tensorboard
            root = Path(t.log_dir).expanduser().resolve() if t.log_dir else cfg.output_path / "tensorboard"
            self.tb_dir = root / time.strftime(f"{cfg.name}-%Y%m%d-%H%M%S")  # one folder per invocation: re-runs do not overlap
            self.tb = SummaryWriter(str(self.tb_dir / "run"))
            self.tb.add_text("config", "```yaml\n" + self._config_yaml() + "```")
            log.info("TensorBoard: %s", self.tb_dir)
        if self.enabled:
            timings.listeners.append(self._stage)
            atexit.register(self._abandoned)

    @property
    def enabled(self) -> bool:
        return self.run_id is not None or self.tb is not None

    def _config_yaml(self) -> str:
        return yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def _open_mlflow(self, run_file: Path | None, resume: bool) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise RuntimeError("tracking.mlflow needs MLflow: pip install 'mdistill[tracking]'") from None
        m = self.cfg.tracking.mlflow
        self.uri, self.experiment = m.resolved_uri(), m.experiment or self.cfg.name
        store = m.local_store()
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:  # beside a local store, not in whatever folder the process happens to run in
            location = m.artifact_location or (str(store / "mlartifacts") if store is not None else None)
            self.experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
        previous = run_file.read_text().strip() if resume and run_file is not None and run_file.exists() else None
        if previous:
            self.run_id = previous
            self.client.update_run(previous, status="RUNNING")
        else:
            tags = {"mdistill.recipe": self.recipe, "mdistill.output_dir": str(self.cfg.output_path)}
            self.run_id = self.client.create_run(self.experiment_id, run_name=self.cfg.name, tags=tags).info.run_id
            self._log_params(self.run_id, self.cfg.model_dump(mode="json"))
            self.client.log_text(self.run_id, self._config_yaml(), "config.yaml")
        if run_file is not None:
            run_file.parent.mkdir(parents=True, exist_ok=True)
            run_file.write_text(self.run_id)
        log.info("MLflow: run %s in experiment %r at %s", self.run_id, self.experiment, self.uri)

    # -- logging ---------------------------------------------------------------------------------

    def _log_params(self, run_id: str, tree: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_CHARS]) for k, v in flatten(tree).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=params[i : i + 100])

    def _log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[i : i + 1000])

    def _scalars(self, metrics: dict[str, float], step: int = 0) -> None:
        for key, value in metrics.items():
            self.tb.add_scalar(key, value, global_step=step)
        self.tb.flush()

    def _stage(self, name: str, seconds: float, error: BaseException | None) -> None:
        """A stage ended (``report.Timings``): its seconds now, so a long run shows its progress."""
        if self.done:
            return
        metric = {f"time_s/{name}": seconds}
        if self.run_id is not None:
            self._log_metrics(self.run_id, metric)
        if self.tb is not None:
            self._scalars(metric)
        if error is not None:
            self._end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED", f"stage {name}: {type(error).__name__}: {error}")

    def training(self, name: str, *, child: bool, params: dict[str, BaseModel] | None = None) -> WorkerTracking | None:
        """Where training ``name`` logs its per-step metrics: the run itself, or (``child``: the recipe
        trains several models) a child run named after it, which ``finish`` gives its model and metrics."""
        if not self.enabled:
            return None
        run_id = self.run_id
        if child and self.run_id is not None:
            tags = {"mlflow.parentRunId": self.run_id, "mdistill.training": name}
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            self.children[name] = run_id
            if params:
                self._log_params(run_id, {k: v.model_dump(mode="json") for k, v in params.items()})
        return WorkerTracking(
            mlflow_uri=self.uri if run_id else None,
            experiment_id=self.experiment_id,
            run_id=run_id,
            run_name=name if child else self.cfg.name,
            tensorboard_dir=str(self.tb_dir / name) if self.tb_dir is not None else None,
        )

    def finish(self, report) -> None:
        """The run's outcome: final tables, report files and models; the runs end FINISHED."""
        if not self.enabled or self.done:
            return
        rows, out = table_rows(report), self.cfg.output_path
        metrics = {"time_s/total": report.total_s} | final_metrics(rows) | search_metrics(report)
        try:
            if self.run_id is not None:
                self._finish_mlflow(report, rows, metrics, out)
            if self.tb is not None:
                self._scalars(metrics)
                if (out / "report.md").exists():
                    self.tb.add_text("report", (out / "report.md").read_text())
        except Exception:  # the run's work is done and written: a tracker failing now must not lose it
            log.exception("tracking: the run's results were not all logged")
        self._end("FINISHED")

    def _finish_mlflow(self, report, rows: dict, metrics: dict[str, float], out: Path) -> None:
        import pandas as pd

        self._log_metrics(self.run_id, metrics)
        for split, split_rows in rows.items():  # shown as tables in MLflow's UI
            self.client.log_table(self.run_id, data=pd.DataFrame(split_rows), artifact_file=f"tables/{split}.json")
        for pattern in REPORT_FILES:
            for f in sorted(out.glob(pattern)):
                self.client.log_artifact(self.run_id, str(f), artifact_path="report")
        models = exported_models(report)
        for name, path in models.items():
            run_id = self.children.get(name, self.run_id)
            if run_id != self.run_id:
                self._log_metrics(run_id, final_metrics(rows, model=name))
            folder = "model" if run_id != self.run_id or len(models) == 1 else f"models/{name}"
            if self.cfg.tracking.mlflow.log_model:
                self.client.log_artifacts(run_id, str(path), artifact_path=folder)
            self.client.set_tag(run_id, f"mdistill.{folder}", str(path))

    def _end(self, status: str, error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        try:
            if self.run_id is not None:
                for run_id in [*self.children.values(), self.run_id]:
                    if error is not None:
                        self.client.set_tag(run_id, "mdistill.error", error[:MAX_PARAM_CHARS])
                    self.client.set_terminated(run_id, status=status)
            if self.tb is not None:
                self.tb.close()
        except Exception as e:
            log.warning("tracking: could not end the run %s: %s", status, e)

    def _abandoned(self) -> None:
        """At exit, a run that neither finished nor failed in a stage: the process ended early."""
        self._end("FAILED", "the process ended before the run finished")
