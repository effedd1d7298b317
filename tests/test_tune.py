"""`mdistill tune` on real Ray (local, 2 CPUs) with the tiny random-init models and the fixture
corpus: a 2-trial search whose driver is killed mid-search (SIGKILL) after the first trial
finished, then re-run: the search resumes (`Tuner.restore`), the finished trial is not run again,
and the outputs (results table, best config, report with the Tune section and plot) are written.

The drivers are subprocesses (`mdistill tune ...`), each with its own local Ray instance."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdistill.config import load_config

from conftest import tiny_run_overrides

REPO = Path(__file__).resolve().parents[1]


DRIVERS: list[subprocess.Popen] = []


def _driver(overrides: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from mdistill.cli import app; app()", "tune", "configs/default.yaml", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    DRIVERS.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT))
    return DRIVERS[-1]


@pytest.fixture
def kill_drivers_after():
    """A failed or timed-out test must not leave its driver (and its Ray instance) running."""
    yield
    for d in DRIVERS:
        if d.poll() is None:
            d.kill()
            d.wait(30)
    DRIVERS.clear()


def _trial_states(experiment: Path) -> dict[str, str]:
    """trial id -> status, as the driver last saved them (what Tuner.restore will see)."""
    files = sorted(glob.glob(str(experiment / "experiment_state-*.json")))
    if not files:
        return {}
    try:
        data = json.loads(Path(files[-1]).read_text())
    except json.JSONDecodeError:  # being rewritten
        return {}
    return {s["trial_id"]: s["status"] for s in (json.loads(t[0]) for t in data["trial_data"])}


def _starts(experiment: Path) -> dict[str, int]:
    """trial id -> how many times the trial function started (its marker file)."""
    out = {}
    for f in experiment.glob("distill_trial_*/mdistill_starts.txt"):
        out["_".join(f.parent.name.split("_")[2:4])] = len(f.read_text().split())
    return out


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_tune_two_trials_killed_then_resumed(tmp_path, tiny_models, pairs, kill_drivers_after):
    out = tmp_path / "run"
    overrides = [
        "name=tiny-tune",
        *tiny_run_overrides(tmp_path, tiny_models, pairs.to_dict("records")),
        "student.train_layers=1",
        "train.workers=1",
        "train.epochs=2",
        "train.bucket_rows=64",
        # one trial at a time, so that the first is finished while the second runs
        "tune={num_samples: 2, reports: 2, max_concurrent_trials: 1, scheduler: {asha: {grace_period: 1, max_t: 2}},"
        " space: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}, train.loss: {choice: [mse, cosine]}, student.train_layers: {choice: [1, 2]}}}",
        f"tracking.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
    ]
    experiment = out / "tune" / "tiny-tune"

    # 1. Start the search; kill the driver once trial 1 is saved as finished and trial 2 has started.
    first = _driver(overrides, tmp_path / "first.log")
    deadline, killed, finished_before = time.time() + 600, False, {}
    while time.time() < deadline and first.poll() is None:
        states, starts = _trial_states(experiment), _starts(experiment)
        done = [t for t, s in states.items() if s == "TERMINATED"]
        if len(done) == 1 and len(starts) == 2:
            finished_before = {t: (experiment.glob(f"distill_trial_{t}_*/progress.csv"), starts[t]) for t in done}
            progress = next(next(iter(finished_before.values()))[0]).read_text()
            os.kill(first.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.5)
    first.wait(60)
    log = (tmp_path / "first.log").read_text()
    assert killed, f"driver ended (rc {first.returncode}) before it could be killed mid-search:\n{log[-3000:]}"
    (done_id,) = finished_before
    time.sleep(3)  # the killed driver's Ray processes go with it (fate sharing)

    # 2. Re-run: the search resumes, the finished trial is not started again.
    second = _driver(overrides, tmp_path / "second.log")
    rc = second.wait(600)
    log2 = (tmp_path / "second.log").read_text()
    assert rc == 0, log2[-4000:]
    assert "resuming" in log2
    starts = _starts(experiment)
    assert len(starts) == 2
    assert starts[done_id] == 1, starts  # finished before the kill: not re-run
    (other,) = set(starts) - {done_id}
    assert starts[other] == 2, starts  # interrupted: run again
    assert next(experiment.glob(f"distill_trial_{done_id}_*/progress.csv")).read_text() == progress  # its results kept

    # 3. Outputs: every trial reported the dev metric; table, best config, report, plot.
    report = json.loads((out / "report.json").read_text())
    tune = report["tune"]
    assert tune["metric"] == "dev_pooled_teacher_space_top1" and len(tune["trials"]) == 2
    for t in tune["trials"]:
        assert t["status"] == "TERMINATED" and t["history"], t
        assert all(0 <= h["dev_pooled_teacher_space_top1"] <= 1 and h["training_iteration"] >= 1 for h in t["history"])
        assert isinstance(t["stopped_early"], bool)
    assert {tune["best"]["trial_id"], tune["worst"]["trial_id"]} <= {t["trial_id"] for t in tune["trials"]}
    assert tune["gap"] == pytest.approx(tune["best"]["best"] - tune["worst"]["best"])
    best = load_config(out / "best_config.yaml")
    assert best.tune is None and best.name == "tiny-tune-best"
    assert best.train.lr == pytest.approx(tune["best"]["config"]["train.lr"])
    assert best.student.train_layers == tune["best"]["config"]["student.train_layers"]
    rows = list(csv.DictReader(open(out / "tune_results.csv")))
    assert len(rows) == 2 and {"trial_id", "best", "stopped_early", "train.lr"} <= set(rows[0])
    md = (out / "report.md").read_text()
    assert "## Tune (dev_pooled_teacher_space_top1, max)" in md and "gap" in md and "tune_trials.png" in md
    assert (out / "tune_trials.png").stat().st_size > 5000
    # one frozen pass and training set per student shape, shared by the trials (each shape's head init)
    assert sorted(p.name for p in (out / "tune_prep").iterdir()) == [
        "train_layers-1.head_init.safetensors",
        "train_layers-2.head_init.safetensors",
    ]
    assert set(tune["shapes"]) == {"train_layers-1", "train_layers-2"}

    # 4. MLflow: the search is one run, continued by the resumed driver; every trial is a child run of it
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["tiny-tune"])
    searches = runs[runs["tags.mdistill.recipe"] == "tune"]
    assert len(searches) == 1
    parent = searches.iloc[0]
    assert parent["status"] == "FINISHED" and parent["metrics.tune/best"] == pytest.approx(tune["best"]["best"])
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert set(children["tags.trial_name"]) >= {f"distill_trial_{t['trial_id']}" for t in tune["trials"]}
    finished = children[children["status"] == "FINISHED"]
    assert len(finished) == 2 and finished["params.train.lr"].notna().all()  # the sampled values as params
    for run_id in finished["run_id"]:
        assert mlflow.MlflowClient().get_metric_history(run_id, "dev_pooled_teacher_space_top1")  # one per Tune iteration
