import pytest

from mdistill.config import ConfigError, load_config


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
