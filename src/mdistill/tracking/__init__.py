"""Experiment tracking (the ``tracking:`` section): MLflow and TensorBoard, off by default.

- The driver (``RunTracker``, ``run.py``) opens one MLflow run per recipe run: the config as
  params, each stage's seconds as it ends, the final per-language tables (in-domain and
  out-of-domain) as metrics and tables, the report and the exported model(s) as artifacts. A recipe
  that trains several models (``students:``, the classify recipe's roles) gives each a child run.
- Ray Train workers (``StepLogger``, ``worker.py``) log the training loss and the dev metrics per
  step from rank 0, through Ray Train's MLflow integration (``setup_mlflow``) and tensorboardX.
- Ray Tune trials log through Tune's own logger callbacks (``tune.py``): ``MLflowLoggerCallback``
  as child runs of the search's run, ``TBXLoggerCallback`` in each trial's folder.

Nothing here imports Ray, MLflow or tensorboardX until a tracker is switched on.
"""

from mdistill.tracking.run import RunTracker
from mdistill.tracking.spec import WorkerTracking
from mdistill.tracking.worker import StepLogger

__all__ = ["RunTracker", "StepLogger", "WorkerTracking"]
