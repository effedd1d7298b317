"""The run report: a synthetic ``RunReport`` renders (report.md names every model, the PNGs are
valid), round-trips through report.json, and a missing or damaged report gives a clear error."""

from __future__ import annotations

import math

import pytest

from mdistill.report import ReportError, load_report, write_report
from mdistill.report.schema import DevRecord, LanguageRow, Metrics, StepRecord, TrainLogs, TrialSummary, TuneReport

from report_fixtures import run_report, student_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LANGS = {"de": 399, "es": 337, "fr": 384, "zh_CN": 279}


def _row(base: float, dim_ok: bool = True) -> Metrics:
    return Metrics(
        teacher_space_top1=base if dim_ok else None,
        translation_top1_xx2en=min(1.0, base + 0.05),
        translation_top1_en2xx=min(1.0, base + 0.04),
        mse100=(0.3 - base / 5) if dim_ok else None,
        bitext_f1=min(1.0, base + 0.02),
    )


def synthetic_report(tune: bool = True):
    models = {
        "teacher": 0.4,
        "small:untrained": 0.0,
        "small:linear_map": 0.85,
        "small": 0.9,
        "big:untrained": 0.01,
        "big:linear_map": 0.87,
        "big": 0.93,
    }
    rep = run_report("demo", {"small": ("/runs/demo/models/small", 0.9), "big": ("/runs/demo/models/big", 0.93)}, langs=tuple(LANGS))
    rep.metrics = {
        lang: LanguageRow(n=n, models={m: _row(v + 0.01 * i, dim_ok=m != "big:untrained") for m, v in models.items()})
        for i, (lang, n) in enumerate(LANGS.items())
    }
    rep.baselines = ["teacher", "small:untrained", "small:linear_map", "big:untrained", "big:linear_map"]
    rep.summary = {m: _row(0.5, dim_ok=m != "big:untrained") for m in models}
    for name, scale, strategy in (("small", 1.0, "ddp"), ("big", 1.5, "deepspeed-zero2")):
        s = student_report(f"/runs/demo/models/{name}", params=int(33e6 * scale), strategy=strategy)
        steps = [
            StepRecord(step=st, epoch=st // 100 + 1, loss=0.01 * scale * math.exp(-st / 80) + 0.002, lr=3e-4) for st in range(10, 200, 10)
        ]
        dev = [
            DevRecord(step=st, pooled_teacher_space_top1=0.85 + st / 4000 * scale, pooled_mse100=0.2 - st / 5000)
            for st in (50, 100, 150, 200)
        ]
        s.logs = TrainLogs(history=s.logs.history, steps=steps, dev=dev, resumed_at=[60] if name == "big" else [])
        rep.students[name] = s
    if tune:
        trials = [
            TrialSummary(
                trial_id=f"t{i}",
                config={"train.lr": 10 ** (-3 - i / 2)},
                status="TERMINATED",
                iterations=4 - (i == 2) * 2,
                stopped_early=i == 2,
                best=0.8 + 0.12 - 0.02 * i,
                starts=1,
                path=f"/tune/t{i}",
                history=[
                    {"training_iteration": it, "dev_pooled_teacher_space_top1": 0.8 + 0.03 * it - 0.02 * i}
                    for it in range(1, 5 - (i == 2) * 2)
                ],
            )  # fmt: skip
            for i in range(3)
        ]
        rep.tune = TuneReport(
            metric="dev_pooled_teacher_space_top1", mode="max", search="random", num_trials=3, max_concurrent_trials=1, max_t=4, stopped_early=1,
            experiment="/tune", shapes={}, trials=trials, best=trials[0], worst=trials[2], gap=0.04, best_config="/tune/best_config.yaml",
            results_csv="/tune/tune_results.csv",
        )  # fmt: skip
    return rep


@pytest.mark.parametrize("tune", [True, False])
def test_report_files(tmp_path, tune):
    rep = synthetic_report(tune)
    write_report(tmp_path, rep)
    md = (tmp_path / "report.md").read_text()
    assert load_report(tmp_path) == rep  # report.json round-trips
    for model in rep.metrics["de"].models:
        assert f"| {model} |" in md or f"| **{model}** |" in md, model
    for lang in LANGS:
        assert f"| {lang} |" in md
    pngs = ["metrics_by_language.png", "training.png"] + (["tune_trials.png"] if tune else [])
    for name in pngs:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
        assert f"]({name})" in md
    assert (tmp_path / "tune_trials.png").exists() == tune
    assert "deepspeed-zero2" in md and "–" in md  # undefined teacher-space metric shown as a dash
    assert "Resumed at optimizer step(s) [60]" in md


def test_missing_or_damaged_report_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="no report"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text('{"config": {"name": "x"}')
    with pytest.raises(ReportError, match="report.json: not a valid RunReport"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ReportError, match="report.json"):
        load_report(tmp_path)
