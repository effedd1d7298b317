"""The static-student recipe on real Ray (local, 2 CPUs): fixture corpus -> teacher cache ->
Model2Vec distillation of a tiny random-init transformer + corpus SIF weights -> Ray Train (DDP,
two workers) -> evaluation beside the teacher, the untrained static model and the source
transformer, in-domain and out-of-domain -> export loaded by model2vec and sentence-transformers."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mdistill.config import ConfigError, load_config
from mdistill.report import load_report

from conftest import tiny_run_overrides


def test_static_config_is_checked_before_any_compute():
    cfg = load_config("configs/static.yaml")
    assert cfg.static is not None and cfg.student.trim_vocab
    for bad, says in [
        (["students=[{name: a}]"], "one static student"),
        (["train.strategy=deepspeed"], "DDP on CPU"),
        (["static.sif_a=0"], "greater than 0"),
    ]:
        with pytest.raises((ConfigError, ValueError), match=says):
            load_config("configs/static.yaml", bad)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_static_run_beats_its_untrained_self_and_exports_what_it_evaluated(tmp_path, tiny_models, pairs, ray_shared, show):
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    from mdistill.pipelines.static import run

    outside = tmp_path / "outside.parquet"  # held out (out-of-domain): other English sentences, never trained on
    pq.write_table(pa.Table.from_pandas(pairs.groupby("lang").head(60).assign(en=lambda d: "Also: " + d.en), preserve_index=False), outside)
    overrides = [
        *tiny_run_overrides(tmp_path, tiny_models, pairs.to_dict("records")),
        f"corpus.sources=[{{format: parquet, paths: [{tmp_path / 'corpus.parquet'}]}}, {{format: parquet, name: outside, paths: [{outside}]}}]",
        "corpus.heldout_sources=[outside]",
        "student.trim_vocab=true",
        "train.workers=2",
        "train.epochs=8",
        "train.batch_size=32",
        "train.lr=0.02",
        "train.loss=mse",  # the distance assertions below pin the MSE objective (the default adds a ranking term)
    ]
    report = run(load_config("configs/static.yaml", overrides))
    assert load_report(tmp_path / "run" / "report.json").students.keys() == {"static"}

    s = report.students["static"]
    steps = {x["step"]: x for x in s.built_from}
    assert {"load", "trim_vocab", "distil_static", "sif_weights", "linear_map"} <= steps.keys()
    assert 0 < steps["sif_weights"]["pieces_seen"] <= steps["distil_static"]["pieces"]
    assert s.params == steps["distil_static"]["pieces"] * steps["distil_static"]["dim"]
    assert s.logs.history and s.logs.history[-1].epoch == 8

    for table, where in ((report.metrics, "dev"), (report.heldout_metrics, "heldout")):
        assert set(table) == {"de", "fr"}, where
        for lang, row in table.items():
            got, untrained, mapped = row.models["static"], row.models["untrained"], row.models["linear_map"]
            show(where, lang, f"top-1 {untrained.teacher_space_top1:.3f} -> map {mapped.teacher_space_top1:.3f} -> {got.teacher_space_top1:.3f}",
                 f"mse100 {untrained.mse100:.3f} -> map {mapped.mse100:.3f} -> {got.mse100:.3f}",
                 f"source {row.models['source_transformer'].translation_top1_xx2en:.3f}")  # fmt: skip
            # the linear map moves the distilled space onto the teacher's; training improves on it
            assert mapped.mse100 < 0.5 * untrained.mse100 and got.mse100 < mapped.mse100, (where, lang)
            assert got.teacher_space_top1 > untrained.teacher_space_top1 + 0.1, (where, lang)
        assert {"teacher", "untrained", "linear_map", "source_transformer"} <= set(next(iter(table.values())).models)

    # the export is what was evaluated, in both libraries
    assert s.export.max_abs_diff < 1e-5 and s.export.checked > 0
    texts = list(pairs.text[:10])
    m2v, st = StaticModel.from_pretrained(s.export.path), SentenceTransformer(s.export.path, device="cpu")
    assert np.abs(m2v.encode(texts) - st.encode(texts)).max() < 1e-5
    assert "static" in (tmp_path / "run" / "model" / "README.md").read_text()
