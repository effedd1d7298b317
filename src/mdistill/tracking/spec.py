"""What a Ray Train worker needs to log into the run's trackers (built by the driver, carried in the loop config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WorkerTracking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mlflow_uri: str | None = None  # absolute: workers run in other folders, maybe on other nodes
    experiment_id: str | None = None
    run_id: str | None = None  # the MLflow run the driver created (the run itself, or the student's child run)
    run_name: str | None = None  # resuming a run sets its name: the same one
    tensorboard_dir: str | None = None  # this student's event files
