"""The run report renders a synthetic report dict: report.md names every model, the PNGs are valid."""

from __future__ import annotations

import json
import math

import pytest

from mdistill.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LANGS = {"de": 399, "es": 337, "fr": 384, "zh_CN": 279}


def _row(base: float, dim_ok: bool = True) -> dict:
    return {
        "teacher_space_top1": base if dim_ok else None,
        "translation_top1_xx2en": min(1.0, base + 0.05),
        "translation_top1_en2xx": min(1.0, base + 0.04),
        "mse100": (0.3 - base / 5) if dim_ok else None,
        "bitext_f1": min(1.0, base + 0.02),
    }


def synthetic_report(tune: bool = True) -> dict:
    models = {
        "teacher": 0.4,
        "small:untrained": 0.0,
        "small:linear_map": 0.85,
        "small": 0.9,
        "big:untrained": 0.01,
        "big:linear_map": 0.87,
        "big": 0.93,
    }
    metrics = {
        lang: {"n": n, **{m: _row(v + 0.01 * i, dim_ok=m != "big:untrained") for m, v in models.items()}}
        for i, (lang, n) in enumerate(LANGS.items())
    }
    summary = {m: {k: (None if m == "big:untrained" and k in ("teacher_space_top1", "mse100") else 0.5) for k in _row(0.5)} for m in models}

    def student(scale: float, strategy: str) -> dict:
        steps = [{"step": s, "epoch": s // 100, "loss": 0.01 * scale * math.exp(-s / 80) + 0.002, "lr": 3e-4} for s in range(0, 200, 10)]
        return {
            "history": [
                {"epoch": 1, "step": 100, "loss": 0.004 * scale, "samples_per_s": 420.0, "elapsed_s": 150.0},
                {"epoch": 2, "step": 200, "loss": 0.003 * scale, "samples_per_s": 430.0, "elapsed_s": 300.0},
            ],
            "steps": steps,
            "dev": [{"step": s, "teacher_space_top1": 0.85 + s / 4000 * scale, "mse100": 0.2 - s / 5000} for s in (50, 100, 150, 200)],
            "export": {"path": f"/runs/demo/{strategy}/model", "checked": 100, "max_abs_diff": 3.2e-5},
            "params": int(33e6 * scale),
            "strategy": strategy,
            "model": "multilingual-e5-small",
        }

    rep = {
        "config": {"name": "demo", "student": {"model": "multilingual-e5-small"}},
        "finished": "2026-11-22T10:00:00+00:00",
        "total_s": 713.2,
        "timings_s": {"corpus": 49.0, "teacher": 66.0, "train": 308.0, "evaluate": 11.0},
        "corpus": {
            "total": {"rows_in": 9000, "kept": 8000},
            "languages": {lang: {"rows_in": 2000, "kept": 1800, "rejected": {"too_short": 150, "duplicate": 50}} for lang in LANGS},
            "sources": {"libreoffice": {"rows_in": 9000, "kept": 8000}},
        },
        "data": {"train_pairs": dict.fromkeys(LANGS, 1500), "dev_pairs": LANGS, "train_english": 1752},
        "teacher_cache": {"distinct_texts": 3552, "cache_hits": 0, "computed": 3552, "fingerprint": "abcdef0123456789"},
        "metrics": metrics,
        "baselines": ["teacher", "small:untrained", "small:linear_map", "big:untrained", "big:linear_map"],
        "students": {"small": student(1.0, "ddp"), "big": student(1.5, "deepspeed-zero2")},
        "summary": summary,
    }
    if tune:
        rep["tune"] = {
            "metric": "dev_teacher_space_top1",
            "mode": "max",
            "trials": [
                {
                    "trial_id": f"t{i}",
                    "config": {"lr": 10 ** (-3 - i / 2)},
                    "status": "TERMINATED",
                    "stopped_early": i == 2,
                    "history": [
                        {"training_iteration": it, "dev_teacher_space_top1": 0.8 + 0.03 * it - 0.02 * i}
                        for it in range(1, 5 - (i == 2) * 2)
                    ],
                }
                for i in range(3)
            ],
        }
    return rep


@pytest.mark.parametrize("tune", [True, False])
def test_report_files(tmp_path, tune):
    rep = synthetic_report(tune)
    write_report(tmp_path, rep)
    md = (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["metrics"].keys() == rep["metrics"].keys()
    for model in rep["metrics"]["de"]:
        if model != "n":
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


def test_report_reads_the_single_student_layout(tmp_path):
    rep = synthetic_report(False)
    metrics = {lang: {"n": r["n"], **{m: r[m] for m in ("teacher", "small:untrained", "small")}} for lang, r in rep["metrics"].items()}
    for r in metrics.values():
        r["untrained"], r["student"] = r.pop("small:untrained"), r.pop("small")
    old = {k: rep[k] for k in ("config", "finished", "total_s", "timings_s", "corpus", "data", "teacher_cache")}
    old |= {
        "metrics": metrics,
        "train": {"history": rep["students"]["small"]["history"]},
        "export": {"path": "/x/model", "checked": 100, "max_abs_diff": 1e-5},
        "beats_baselines": dict.fromkeys(LANGS, True),
    }
    write_report(tmp_path, old)
    md = (tmp_path / "report.md").read_text()
    assert "| **student** |" in md and "| de | 399 | untrained |" in md and "max abs diff 1.00e-05" in md
    assert (tmp_path / "metrics_by_language.png").exists() and (tmp_path / "training.png").exists()
