import pytest

from mdistill.config import ConfigError, RunConfig, load_config


def test_default_config_validates():
    cfg = load_config("configs/default.yaml")
    assert cfg.corpus.langs == ["de", "fr", "es", "zh_CN"]
    assert cfg.ray.dashboard_host == "127.0.0.1"


def test_overrides_are_typed_and_nested():
    cfg = load_config("configs/default.yaml", ["train.epochs=5", "train.lr=1e-3", "corpus.langs=[de, zh-Hans]"])
    assert cfg.train.epochs == 5 and cfg.train.lr == 1e-3
    assert cfg.corpus.langs == ["de", "zh_CN"]


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epoch"):
        load_config(p)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config("configs/default.yaml", ["train.batch_size=many"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config("configs/default.yaml", ["train.epochs"])


def test_cli_rejects_invalid_config_before_compute(tmp_path):
    from typer.testing import CliRunner

    from mdistill.cli import app

    r = CliRunner().invoke(app, ["run", "configs/default.yaml", "student.nope=1"])
    assert r.exit_code == 2
    assert "student.nope" in r.output


def test_students_inherit_student_and_train_sections_and_are_validated_before_compute():
    cfg = load_config("configs/students.yaml")
    specs = {name: (s, t) for name, s, t in cfg.student_specs()}
    assert set(specs) == {"e5-12l", "e5-4l"}
    assert specs["e5-12l"][0].train_layers == 4 and specs["e5-12l"][1].strategy == "ddp"  # from student:/train:
    assert specs["e5-4l"][0].keep_layers == [0, 3, 7, 11] and specs["e5-4l"][0].train_layers == 2
    assert specs["e5-4l"][1].strategy == "deepspeed" and specs["e5-4l"][1].zero_stage == 2
    assert load_config("configs/default.yaml").student_specs()[0][0] == "student"  # one student: the short name
    with pytest.raises(ConfigError, match="unique"):
        load_config("configs/default.yaml", ["students=[{name: a}, {name: a}]"])
    with pytest.raises(ConfigError, match=r"students\[a\]\.train"):
        load_config("configs/default.yaml", ["students=[{name: a, train: {loss: huber}}]"])
    with pytest.raises(ConfigError, match="keep_layers"):
        load_config("configs/default.yaml", ["student.keep_layers=[1, 1]"])


def test_model_defaults_equal_the_default_config():
    """One set of defaults: what the commands that take no config run on is configs/default.yaml."""
    assert RunConfig().model_dump() == load_config("configs/default.yaml").model_dump()
