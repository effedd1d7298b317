"""The classify recipe end to end on real Ray (``pipelines/classify.py``): a LibreOffice help tree
written from the real help pairs of the fixture (paths, paragraph ids and texts as Debian ships
them), tiny random-init encoders as teacher and student, every role (teacher, zero-shot,
translate-train, soft, hard, online) trained on Ray Train, evaluated, exported and reported."""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mdistill.config import ConfigError, load_config
from mdistill.stages.classify import TaskFiles
from mdistill.tasks import help_topics

ROLES = ["zero_shot", "translate_train", "soft", "hard", "online"]


def write_help_tree(root: Path, pairs) -> int:
    """``<root>/debian/libreoffice-help/usr/share/libreoffice/help/<lang>/text/...html``: each
    fixture pair (``source`` = ``libreoffice:<path>#<paragraph id>``) as a paragraph of its file in
    en-US and in its language, where the corpus builder looks before downloading anything."""
    help_root = root / "debian" / "libreoffice-help" / "usr" / "share" / "libreoffice" / "help"
    files: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for r in pairs.itertuples():
        path, pid = r.source.removeprefix("libreoffice:").split("#")
        files[("en-US", path)][pid] = r.en
        files[(r.lang, path)][pid] = r.text
    for (lang, path), paras in files.items():
        f = help_root / lang / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("<html><body>" + "".join(f'<p id="{k}">{html.escape(v)}</p>' for k, v in paras.items()) + "</body></html>")
    return len(files)


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory, tiny_models, pairs, ray_shared_tune):
    from mdistill.pipelines.classify import run

    tmp = tmp_path_factory.mktemp("classify")
    cache = tmp / "cache"
    write_help_tree(cache, pairs)
    cfg = load_config(
        Path(__file__).parents[1] / "configs" / "classify.yaml",
        [
            f"cache_dir={cache}",
            f"output_dir={tmp / 'run'}",
            "corpus.langs=[de, fr]",
            f"teacher.model={tiny_models['teacher']}",
            f"student.model={tiny_models['student']}",
            "student.train_layers=2",
            "classify.max_train_english=60",
            "classify.labelled_english=40",
            "classify.max_eval_english=40",
            "classify.teacher_epochs=2",
            "classify.teacher_train_layers=all",
            "train.batch_size=8",
            "ray.num_cpus=2",
        ],
    )
    return cfg, run(cfg)


@pytest.mark.integration
@pytest.mark.slow
def test_every_role_trains_on_its_rows_and_is_reported(classify_run, show):
    cfg, report = classify_run
    assert list(report.classifiers) == ["teacher", *ROLES]
    # the student's frozen pass ran once for every role: its states of every training and evaluation text
    assert report.states_cache is not None and report.states_cache.computed == report.states_cache.distinct_texts > 0
    for role, c in report.classifiers.items():
        assert c.logs.history and np.isfinite(c.logs.history[-1].loss), role
        assert (c.export_max_abs_diff is None) == (role == "teacher"), role  # each student's export checked against what was evaluated
        assert role == "teacher" or c.export_max_abs_diff < 1e-2, role
        assert c.languages == (["en"] if role in ("teacher", "zero_shot") else ["de", "en", "fr"]), role
    modes = {r: c.mode for r, c in report.classifiers.items()}
    assert modes == {
        "teacher": "supervised",
        "zero_shot": "supervised",
        "translate_train": "supervised",
        "soft": "soft",
        "hard": "hard",
        "online": "online",
    }
    # zero-shot trains as many optimizer steps as a student over every language
    zs, tt = report.classifiers["zero_shot"], report.classifiers["translate_train"]
    assert zs.epochs > tt.epochs and abs(zs.logs.history[-1].step - tt.logs.history[-1].step) <= zs.epochs
    # every language of the test files, every model, and the checks of the soft student
    assert set(report.test) == {"en", "de", "fr"}
    assert all(set(row) == {"teacher", *ROLES} for row in report.test.values())
    assert set(report.checks) == {"soft_vs_zero_shot", "soft_vs_teacher_en"} and set(report.checks["soft_vs_zero_shot"]) == {"de", "fr"}
    for name in ("report.md", "report.json", "accuracy_by_language.png", "confusion_matrix.png", "training.png"):
        assert (cfg.output_path / name).stat().st_size > 0, name
    assert "| soft |" in (cfg.output_path / "report.md").read_text()
    show("test accuracy de:", {m: round(v.accuracy, 3) for m, v in report.test["de"].items()})


@pytest.mark.integration
@pytest.mark.slow
def test_classifier_teacher_cache_reads_back_the_teachers_logits(classify_run):
    """The logits the students trained on and the teacher baseline was scored with are the
    teacher's own: recomputed from the exported teacher directory, they agree."""
    from mdistill.encode import classify_batch, load_classifier
    from mdistill.stages.teacher import open_teacher

    cfg, report = classify_run
    teacher = open_teacher(cfg.teacher.model_copy(update={"model": report.teacher, "kind": "classifier"}), cfg.cache_path)
    assert teacher.cache.fingerprint == report.teacher_cache.fingerprint
    texts = TaskFiles(Path(), cfg.output_path / "task" / "eval", True, "").eval_table().column("text").to_pylist()
    cached = teacher.cache.lookup(texts, column="logits")
    model, tok = load_classifier(report.teacher, device="cpu")
    direct = classify_batch(model, tok, texts, max_seq_length=cfg.teacher.max_seq_length, cpu_bf16=cfg.teacher.cpu_bf16)  # as the pass ran
    assert cached.shape == (len(texts), len(help_topics.labels()))
    np.testing.assert_allclose(cached, direct, atol=1e-5)


@pytest.mark.integration
@pytest.mark.slow
def test_exported_student_answers_the_text_classification_pipeline_in_german(classify_run):
    from transformers import AutoModelForSequenceClassification, pipeline

    from mdistill.encode import classify_batch
    from mdistill.stages.classify import metrics_table

    cfg, report = classify_run
    path = report.classifiers["soft"].export
    out = pipeline("text-classification", model=path, device="cpu")("Wählen Sie Format - Zellen, um das Zahlenformat zu ändern.")
    assert out[0]["label"] in help_topics.labels() and 0 < out[0]["score"] <= 1
    # the exported model, from text, gives the numbers the report shows (evaluated from the cached
    # float16 states): the same predictions but where two logits are within the states' rounding
    rows = TaskFiles(Path(), cfg.output_path / "task" / "eval", True, "").eval_table()
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    from transformers import AutoTokenizer

    logits = classify_batch(
        model,
        AutoTokenizer.from_pretrained(path),
        rows.column("text").to_pylist(),
        max_seq_length=cfg.student.max_seq_length,
        prompt="query: ",
    )
    got, want = metrics_table(rows, {"soft": logits}, "test")["de"]["soft"], report.test["de"]["soft"]
    assert got.n == want.n and abs(got.accuracy - want.accuracy) <= 1 / want.n
    assert report.classifiers["soft"].export_max_abs_diff < 1e-2
    card = (Path(path) / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and all(f"| {label} |" in card for label in help_topics.labels())


def test_tune_accepts_temperature_and_alpha_only_for_the_classify_recipe(tmp_path):
    space = ["tune.space={train.temperature: {grid: [1.0, 4.0]}, train.alpha: {uniform: [0.2, 0.8]}}", "tune.search=random"]
    cfg = load_config(Path(__file__).parents[1] / "configs" / "classify.yaml", space)
    assert set(cfg.tune.space) == {"train.temperature", "train.alpha"}
    with pytest.raises(ConfigError, match="only the classify recipe reads it"):
        load_config(None, space)
    with pytest.raises(ConfigError, match="alpha"):
        load_config(Path(__file__).parents[1] / "configs" / "classify.yaml", ["tune.space={train.alpha: {grid: [1.5]}}"])


@pytest.mark.integration
@pytest.mark.slow
def test_teacher_train_classifier_command_exports_a_loadable_teacher(classify_run, tiny_models):
    """``mdistill teacher train-classifier``: the teacher stage alone (same help tree and cache as the
    recipe), exported as a Hugging Face classifier with the task's labels and a model card."""
    from transformers import AutoModelForSequenceClassification
    from typer.testing import CliRunner

    from mdistill.cli import app

    cfg, _ = classify_run
    out = cfg.output_path.parent / "teacher_only"
    args = [
        f"cache_dir={cfg.cache_path}", f"output_dir={out}", "corpus.langs=[de, fr]", f"teacher.model={tiny_models['teacher']}",
        "classify.teacher_train_layers=all", "classify.max_train_english=60", "classify.labelled_english=40", "classify.max_eval_english=40", "classify.teacher_epochs=1",
        "train.batch_size=8",
    ]  # fmt: skip
    r = CliRunner().invoke(app, ["teacher", "train-classifier", "configs/classify.yaml", *args])
    assert r.exit_code == 0, r.output
    assert f"teacher: {out / 'teacher'}" in r.output and "English dev accuracy" in r.output
    model = AutoModelForSequenceClassification.from_pretrained(out / "teacher")
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == help_topics.labels()
    assert "- en" in (out / "teacher" / "README.md").read_text()


# Last in the module: a trial's Train worker group keeps its placement group (Ray #54305, Train V2
# inside Tune) until the driver's Ray instance goes, so the module's later trainers would find no CPU.
@pytest.mark.integration
@pytest.mark.slow
def test_tune_searches_temperature_and_alpha_and_asha_stops_a_trial(tmp_path, tiny_models, pairs, show, ray_shared_tune):
    """``mdistill tune`` on a classify config: trials of the soft student over the sampled
    temperature / alpha / lr, ranked by the training loss; a trial whose lr cannot learn (1e-9)
    reaches the first rung behind the one before it (same data, same order, same start) and ASHA
    stops it there."""
    from mdistill.pipelines.tune_classify import tune_classify

    cache = tmp_path / "cache"
    write_help_tree(cache, pairs)
    cfg = load_config(
        Path(__file__).parents[1] / "configs" / "classify.yaml",
        [
            f"cache_dir={cache}", f"output_dir={tmp_path / 'tune'}", "corpus.langs=[de, fr]",
            f"teacher.model={tiny_models['teacher']}", f"student.model={tiny_models['student']}", "student.train_layers=2",
            "classify.max_train_english=60", "classify.labelled_english=40", "classify.max_eval_english=40", "classify.teacher_epochs=1", "classify.teacher_train_layers=all",
            "train.batch_size=8", "train.epochs=2", "train.warmup_ratio=0.0", "ray.num_cpus=2",
            "tune.space={train.lr: {grid: [3.0e-3, 1.0e-9]}, train.temperature: {grid: [2.0]}, train.alpha: {grid: [0.5]}}",
            "tune.search=grid", "tune.num_samples=1", "tune.metric=loss", "tune.mode=min", "tune.reports=4", "tune.max_concurrent_trials=1",
            "tune.scheduler.asha.grace_period=1",
        ],
    )  # fmt: skip
    report = tune_classify(cfg)
    t = report.tune
    by_lr = {tr.config["train.lr"]: tr for tr in t.trials}
    show("trials:", {lr: (round(tr.best, 4), tr.iterations, tr.stopped_early) for lr, tr in by_lr.items()})
    assert len(t.trials) == 2 and set(by_lr) == {3.0e-3, 1.0e-9} and all(tr.config["train.temperature"] == 2.0 for tr in t.trials)
    assert t.best.config["train.lr"] == 3.0e-3
    assert by_lr[1.0e-9].stopped_early and by_lr[1.0e-9].iterations < by_lr[3.0e-3].iterations
    assert t.stopped_early == 1 and Path(t.best_config).exists()
