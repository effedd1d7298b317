"""Per-step training metrics from inside a Ray Train worker group, written by rank 0 only.

MLflow goes through Ray Train's integration, ``ray.air.integrations.mlflow.setup_mlflow`` (rank 0
gets the ``mlflow`` module, the other ranks a no-op), which resumes the run the driver created:
MLflow's ``start_run`` picks the run up from ``MLFLOW_RUN_ID``. TensorBoard goes through
tensorboardX's ``SummaryWriter`` (what Tune's ``TBXLoggerCallback`` uses; Ray Train V2 has no
TensorBoard callback of its own). A tracker that fails is a warning: it must not stop training.
"""

from __future__ import annotations

import os

from mdistill.log import get_logger
from mdistill.tracking.spec import WorkerTracking

log = get_logger("tracking")


class StepLogger:
    def __init__(self, spec: WorkerTracking | None, rank: int):
        self.mlflow = self.tb = None
        if spec is None or rank != 0:
            return
        try:
            if spec.run_id is not None:
                from ray.air.integrations.mlflow import setup_mlflow

                os.environ["MLFLOW_RUN_ID"] = spec.run_id  # consumed by mlflow.start_run: the driver's run, not a new one
                self.mlflow = setup_mlflow(tracking_uri=spec.mlflow_uri, experiment_id=spec.experiment_id, run_name=spec.run_name)
            if spec.tensorboard_dir is not None:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(spec.tensorboard_dir)
        except Exception as e:  # e.g. a SQLite store on a folder this node does not mount
            log.warning("tracking: this worker logs no per-step metrics: %s", e)

    def log(self, metrics: dict[str, float | None], step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        try:
            if self.mlflow is not None:
                self.mlflow.log_metrics(metrics, step=step)
            if self.tb is not None:
                for key, value in metrics.items():
                    self.tb.add_scalar(key, value, global_step=step)
                self.tb.flush()  # on disk now: TensorBoard shows the run as it trains, and Ray may end the worker without warning
        except Exception as e:  # a tracking server that is down must not stop training
            log.warning("tracking: step %d not logged: %s", step, e)
