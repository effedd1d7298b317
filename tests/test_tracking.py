"""Experiment tracking: a tiny run on real Ray (local, 2 CPUs) with ``tracking.mlflow`` and
``tracking.tensorboard`` set, read back with MLflow's own search API and TensorBoard's own event
reader; the pure parts (config, flattening, the final tables as metrics) without Ray."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mdistill.config import ConfigError, load_config
from mdistill.tracking.run import final_metrics, flatten

from conftest import tiny_run_overrides


def test_tracking_is_off_by_default_and_switched_on_from_the_command_line(tmp_path):
    assert load_config("configs/default.yaml").tracking.model_dump() == {"mlflow": None, "tensorboard": None}
    cfg = load_config("configs/default.yaml", ["tracking.mlflow=true", "tracking.tensorboard={}"])
    assert cfg.tracking.mlflow.tracking_uri == "sqlite:///runs/mlflow.db" and cfg.tracking.tensorboard.log_dir is None
    # a relative SQLite path is made absolute for the workers; its folder is checked for sharing like output_dir
    assert cfg.tracking.mlflow.resolved_uri() == f"sqlite:///{Path('runs/mlflow.db').resolve()}"
    assert cfg.tracking.shared_folders() == {"tracking.mlflow.tracking_uri": Path("runs").resolve()}
    uri = f"sqlite:///{tmp_path}/m.db"
    assert load_config("configs/default.yaml", [f"tracking.mlflow.tracking_uri={uri}"]).tracking.mlflow.resolved_uri() == uri
    for bad in ("runs/mlruns", "file:///tmp/mlruns"):  # MLflow 3 refuses its file store: say what works before any compute
        with pytest.raises(ConfigError, match=r"tracking\.mlflow\.tracking_uri: .*sqlite:///"):
            load_config("configs/default.yaml", [f"tracking.mlflow.tracking_uri={bad}"])


def test_config_is_flattened_to_the_override_keys_and_tables_to_metric_keys():
    assert flatten({"train": {"lr": 1e-3, "head_lr": None}, "students": [], "tune": {}}) == {
        "train.lr": 1e-3,
        "train.head_lr": None,
        "students": [],
        "tune": {},
    }
    rows = {
        "heldout": [
            {"lang": "de", "model": "student", "n": 5, "teacher_space_top1": 0.5, "mse100": None},
            {"lang": "fr", "model": "student", "n": 5, "teacher_space_top1": 0.7, "mse100": None},
            {"lang": "de", "model": "teacher", "n": 5, "teacher_space_top1": 0.1, "mse100": None},
        ]
    }
    assert final_metrics(rows) == pytest.approx(
        {
            "heldout/de/student/teacher_space_top1": 0.5,
            "heldout/fr/student/teacher_space_top1": 0.7,
            "heldout/de/teacher/teacher_space_top1": 0.1,
            "heldout/mean/student/teacher_space_top1": 0.6,
            "heldout/mean/teacher/teacher_space_top1": 0.1,
        }
    )
    assert final_metrics(rows, model="student") == pytest.approx(
        {"heldout/de/teacher_space_top1": 0.5, "heldout/fr/teacher_space_top1": 0.7, "heldout/mean/teacher_space_top1": 0.6}
    )


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_tiny_run_is_tracked_in_mlflow_and_tensorboard(tmp_path, tiny_models, pairs, ray_shared, show):
    import mlflow
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mdistill.encode import load_sentence_transformer
    from mdistill.pipelines.run import run

    outside = tmp_path / "outside.parquet"  # a held-out source: the out-of-domain table
    pq.write_table(pa.Table.from_pandas(pairs.groupby("lang").head(30).assign(en=lambda d: "Also: " + d.en), preserve_index=False), outside)
    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    overrides = [
        *tiny_run_overrides(tmp_path, tiny_models, pairs.groupby("lang").head(100).to_dict("records")),
        f"corpus.sources=[{{format: parquet, paths: [{tmp_path / 'corpus.parquet'}]}}, {{format: parquet, name: outside, paths: [{outside}]}}]",
        "corpus.heldout_sources=[outside]",
        "student.train_layers=1",
        "train.workers=1",
        "train.epochs=1",
        "train.max_steps=6",
        "train.log_every=2",
        "train.dev_every=3",
        f"tracking.mlflow.tracking_uri={uri}",
        "tracking.tensorboard={}",
    ]
    report = run(load_config("configs/default.yaml", overrides))
    logs = report.students["student"].logs
    assert [s.step for s in logs.steps] == [2, 4, 6] and [d.step for d in logs.dev] == [3, 6]

    # MLflow: the run is found by the search API, in the experiment named after the run
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["default"])
    assert len(runs) == 1
    found = runs.iloc[0]
    run_id = found["run_id"]
    assert found["status"] == "FINISHED" and found["tags.mlflow.runName"] == "default" and found["tags.mdistill.recipe"] == "run"
    # its config as params (the override keys), every stage's seconds, the final tables in and out of domain
    assert found["params.train.log_every"] == "2" and found["params.student.model"] == str(tiny_models["student"])
    assert found["params.corpus.heldout_sources"] == '["outside"]' and found["params.train.head_lr"] == "null"
    for stage, seconds in report.timings_s.items():
        assert found[f"metrics.time_s/{stage}"] == pytest.approx(seconds)
    for split, table in (("dev", report.metrics), ("heldout", report.heldout_metrics)):
        assert set(table) == {"de", "fr"}
        for lang, row in table.items():
            for model in ("student", "teacher", "untrained", "linear_map"):
                assert found[f"metrics.{split}/{lang}/{model}/teacher_space_top1"] == pytest.approx(row.models[model].teacher_space_top1)
    assert found["metrics.heldout/mean/student/teacher_space_top1"] == pytest.approx(report.heldout_summary["student"].teacher_space_top1)

    # training loss and dev metrics per step, logged by the Ray Train worker (rank 0) as it trained
    client = MlflowClient(tracking_uri=uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(s.step, pytest.approx(s.loss)) for s in logs.steps]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "dev_pooled_teacher_space_top1")] == [
        (d.step, pytest.approx(d.pooled_teacher_space_top1)) for d in logs.dev
    ]
    assert [m.step for m in client.get_metric_history(run_id, "heldout_pooled_mse100")] == [d.step for d in logs.dev]

    # artifacts: the exported model (it loads), the report and the per-language tables
    assert {a.path for a in client.list_artifacts(run_id)} >= {"model", "report", "tables", "config.yaml"}
    assert {a.path for a in client.list_artifacts(run_id, "tables")} == {"tables/dev.json", "tables/heldout.json"}
    assert {"report/report.json", "report/report.md"} <= {a.path for a in client.list_artifacts(run_id, "report")}
    model_dir = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=str(tmp_path / "dl"))
    assert load_sentence_transformer(model_dir, device="cpu").encode(["Hallo Welt"]).shape == (1, 32)

    # TensorBoard: event files its own reader parses, one folder per invocation
    (folder,) = (tmp_path / "run" / "tensorboard").iterdir()
    student = EventAccumulator(str(folder / "student"))
    student.Reload()
    assert [(e.step, e.value) for e in student.Scalars("loss")] == [(s.step, pytest.approx(s.loss)) for s in logs.steps]
    assert [e.step for e in student.Scalars("dev_pooled_teacher_space_top1")] == [d.step for d in logs.dev]
    summary = EventAccumulator(str(folder / "run"))
    summary.Reload()
    tags = summary.Tags()
    assert {f"time_s/{stage}" for stage in report.timings_s} <= set(tags["scalars"])
    assert summary.Scalars("heldout/de/student/teacher_space_top1")[0].value == pytest.approx(
        report.heldout_metrics["de"].models["student"].teacher_space_top1
    )
    assert "config/text_summary" in tags["tensors"] and "report/text_summary" in tags["tensors"]
    show(f"{len(logs.steps)} loss steps, {len(logs.dev)} dev evaluations, {len(tags['scalars'])} summary scalars; run {run_id}")


def test_a_tracked_rerun_resumes_the_same_checkpoints(tmp_path):
    """The trackers are not part of what a stopped run's checkpoints depend on: switching tracking on
    (a new MLflow run id each time) must not make a re-run start afresh."""
    from mdistill.config import TrainConfig
    from mdistill.stages import static
    from mdistill.tracking import WorkerTracking
    from mdistill.training.loop import LoopConfig
    from mdistill.training.static_loop import StaticLoopConfig

    tracking = WorkerTracking(mlflow_uri="sqlite:////x/mlflow.db", experiment_id="1", run_id="abc", tensorboard_dir="/x/tb")
    common = dict(train_rows=10, threads=1, seed=0, train=TrainConfig())
    loop = LoopConfig(student_path="s", train_layers=1, dropout=0.0, prompt="", max_seq_length=8, head_path=None, dev_dir=None, **common)
    assert loop.resume_identity() == loop.model_copy(update={"tracking": tracking}).resume_identity()
    init = tmp_path / "init"
    init.mkdir()
    stamps = []
    for t in (None, tracking):
        static.fresh_or_resume(tmp_path / "run", StaticLoopConfig(init_path=str(init), tracking=t, **common), "teacher")
        stamps.append((tmp_path / "run" / static.SETTINGS_FILE).read_text())
    assert stamps[0] == stamps[1]
