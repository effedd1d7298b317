"""The whole path on real Ray (local, 2 CPUs): fixture corpus -> teacher cache -> two students
(one of them layer-pruned) -> frozen passes -> two concurrent Ray Train runs (gloo) -> evaluation
-> export + model cards -> report; then a warm re-run."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mdistill.config import load_config
from mdistill.report import load_report

from conftest import tiny_run_overrides


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_run_end_to_end_then_warm(tmp_path, tiny_models, pairs, ray_shared):
    from mdistill.encode import load_sentence_transformer
    from mdistill.pipelines.run import run

    bad = [
        {"en": "", "lang": "de", "text": "leer", "source": "x"},
        {"en": "Same text here", "lang": "fr", "text": "Same text here", "source": "x"},
    ]
    # a second source, held out (out-of-domain): other English sentences, never trained on
    outside = tmp_path / "outside.parquet"
    pq.write_table(pa.Table.from_pandas(pairs.groupby("lang").head(60).assign(en=lambda d: "Also: " + d.en), preserve_index=False), outside)
    overrides = [
        *tiny_run_overrides(tmp_path, tiny_models, pairs.to_dict("records") + bad),
        f"corpus.sources=[{{format: parquet, paths: [{tmp_path / 'corpus.parquet'}]}}, {{format: parquet, name: outside, paths: [{outside}]}}]",
        "corpus.heldout_sources=[outside]",
        "student.train_layers=2",
        # a 3-layer (top 2 trained on cached states) and a 2-layer pruned one (ZeRO-2), trained at
        # the same time, one worker each (the full fine-tune is tests/test_resume.py's student)
        "students=[{name: full}, {name: pruned, keep_layers: [0, 2], train_layers: 1, train: {strategy: deepspeed, zero_stage: 2}}]",
        "train.workers=1",
        "train.epochs=2",
        "train.bucket_rows=64",
    ]
    cfg = load_config("configs/default.yaml", overrides)
    report = run(cfg)

    # every input row is kept or rejected with its reason
    m = report.corpus.languages
    assert m["de"].rows_in + m["fr"].rows_in == len(pairs) + 2 + 120
    for lang in ("de", "fr"):
        assert m[lang].rows_in == m[lang].kept + sum(m[lang].rejected.values())
    assert m["de"].rejected["empty"] >= 1 and m["fr"].rejected["identical"] >= 1

    # no English sentence in two splits
    t = pq.read_table(f"{report.corpus_dir}/pairs").to_pandas()
    assert pq.read_table(f"{report.corpus_dir}/quarantine").num_rows == sum(sum(v.rejected.values()) for v in m.values())
    assert t.groupby("en")["split"].nunique().max() == 1

    # the data counts: every English source once + every translation, train and dev
    d = report.data
    samples = sum(d.dev_pairs.values()) + sum(d.heldout_pairs.values())
    sample_english = len(set(t[t.split == "dev"].en)) + len(set(t[t.split == "heldout"].en))  # the tiny corpus: every one sampled
    assert d.student_rows == d.train_english + sum(d.train_pairs.values()) + samples + sample_english

    # the table: the teacher, and per student the untrained model, the linear map and the student
    for lang in ("de", "fr"):
        row = report.metrics[lang]
        assert row.n == d.dev_pairs[lang] > 10
        for model in ("teacher", "full", "full:untrained", "full:linear_map", "pruned", "pruned:untrained", "pruned:linear_map"):
            assert 0.0 <= row.models[model].teacher_space_top1 <= 1.0
        for name in ("full", "pruned"):  # training learned something: closer to the teacher than before it, on unseen rows
            assert row.models[name].mse100 < row.models[f"{name}:untrained"].mse100, (lang, name, row.models)
    students = report.students
    assert students["full"].layers == 3 and students["pruned"].layers == 2
    assert students["pruned"].params < students["full"].params
    assert students["pruned"].strategy == "deepspeed-zero2" and students["full"].strategy == "ddp"
    for s in students.values():
        assert s.logs.history[-1].epoch == 2 and s.logs.dev  # dev metric recorded during training
    assert set(report.summary) >= {"teacher", "full", "pruned"}
    # the out-of-domain split: evaluated for every model beside the dev split, tracked in training
    assert set(report.heldout_metrics) == {"de", "fr"} and sum(d.heldout_pairs.values()) > 20
    for lang, row in report.heldout_metrics.items():
        assert row.n == d.heldout_pairs[lang] and set(row.models) == set(report.metrics[lang].models)
    assert report.headline()[0] == "heldout" and set(report.heldout_beats_baselines) == {"full", "pruned"}
    assert all(r.heldout_pooled_teacher_space_top1 is not None for s in report.students.values() for r in s.logs.dev)
    assert report.teacher_cache.computed == report.teacher_cache.distinct_texts > 0
    assert list(report.driver_peak_rss_mb) == list(report.timings_s)  # every stage, in order
    assert all(0 < mb < 4096 for mb in report.driver_peak_rss_mb.values())

    # each exported model loads with sentence-transformers, reproduces our vectors, has a card
    for name in ("full", "pruned"):
        export = students[name].export
        assert export.max_abs_diff < 1e-3
        st = load_sentence_transformer(export.path, device="cpu")
        assert st.encode(["Hallo Welt"]).shape == (1, 32)
        assert (tmp_path / "run" / "models" / name / "README.md").exists()
    saved = load_report(tmp_path / "run")
    assert saved == report
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| de |" in md and "pruned" in md and (tmp_path / "run" / "metrics_by_language.png").exists()
    assert "## Out of domain" in md and (tmp_path / "run" / "heldout_by_language.png").exists()

    # warm re-run with another loss, stopped after 10 steps (the caches do not depend on either):
    # no teacher or student-state forward pass for cached sentences, the same training set
    # tracked in MLflow this time: two students, so each is a child run of the run
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracked = load_config("configs/default.yaml", [*overrides, f"tracking.mlflow.tracking_uri={uri}"]).tracking
    again = run(
        cfg.model_copy(
            update={"train": cfg.train.model_copy(update={"loss": "cosine", "max_steps": 10, "log_every": 5}), "tracking": tracked}
        )
    )
    assert again.students["full"].logs.history[-1].loss_fn == "CosineLoss"
    assert [h.step for h in again.students["full"].logs.history] == [10]  # a partial epoch, recorded
    assert report.students["full"].logs.history[-1].loss_fn == "TeacherContrastiveLoss"  # the default: mse+contrastive
    assert again.corpus_reused and not report.corpus_reused
    assert again.teacher_cache.computed == 0
    assert all(s.states_cache is None for s in again.students.values())  # the training sets are reused: no frozen pass at all
    assert [s.training_set for s in again.students.values()] == [s.training_set for s in report.students.values()]
    assert again.teacher_cache.cache_hits == report.teacher_cache.distinct_texts
    np.testing.assert_allclose(
        again.metrics["de"].models["teacher"].teacher_space_top1, report.metrics["de"].models["teacher"].teacher_space_top1
    )

    # the MLflow run holds the whole table; each student's child run its steps, its own rows and its model
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["default"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parent) == 1 and parent.iloc[0]["status"] == "FINISHED"
    assert parent.iloc[0]["metrics.dev/de/pruned/teacher_space_top1"] == pytest.approx(
        again.metrics["de"].models["pruned"].teacher_space_top1
    )
    children = runs[runs["tags.mlflow.parentRunId"] == parent.iloc[0]["run_id"]].set_index("tags.mlflow.runName")
    assert set(children.index) == {"full", "pruned"} and set(children["status"]) == {"FINISHED"}
    client = mlflow.MlflowClient()
    for name in ("full", "pruned"):
        child = children.loc[name]
        assert child["params.train.strategy"] == ("deepspeed" if name == "pruned" else "ddp")
        assert (
            [m.step for m in client.get_metric_history(child["run_id"], "loss")]
            == [s.step for s in again.students[name].logs.steps]
            == [5, 10]
        )
        assert child["metrics.dev/fr/teacher_space_top1"] == pytest.approx(again.metrics["fr"].models[name].teacher_space_top1)
        assert "model/modules.json" in {a.path for a in client.list_artifacts(child["run_id"], "model")}
