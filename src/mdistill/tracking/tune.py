"""Tune trials in the run's trackers, through Tune's own logger callbacks: ``MLflowLoggerCallback``
makes each trial a child run of the search's run (MLflow's ``mlflow.parentRunId`` tag) with its
sampled values as params and every Tune result (one per dev evaluation) as metrics;
``TBXLoggerCallback`` writes each trial's event files into its trial folder."""

from __future__ import annotations

from mdistill.tracking.run import RunTracker


def trial_callbacks(tracker: RunTracker) -> list:
    callbacks = []
    if tracker.run_id is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        tags = {"mlflow.parentRunId": tracker.run_id, "mdistill.recipe": f"{tracker.recipe} trial"}
        callbacks.append(MLflowLoggerCallback(tracking_uri=tracker.uri, experiment_name=tracker.experiment, tags=tags))
    if tracker.tb is not None:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    return callbacks
