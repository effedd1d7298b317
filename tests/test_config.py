import re

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


# -- hardening: names, the dashboard host, ranges, duplicate languages, unreadable files -----------


@pytest.mark.parametrize("bad", ["../../escape", "", "a/b", ".hidden", "x" * 129])
def test_names_that_become_paths_and_job_ids_are_rejected_naming_the_key_and_value(bad):
    for key in ("name", "registry.name"):
        with pytest.raises(ConfigError, match=rf"{key}: {key} '{bad}' is not a valid name"):
            load_config("configs/default.yaml", [f"{key}='{bad}'"])
    with pytest.raises(ConfigError, match=r"students\[\]\.name"):
        load_config("configs/default.yaml", [f"students=[{{name: '{bad}'}}]"])


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "my-host", ""])
def test_non_loopback_dashboard_of_the_local_instance_needs_token_auth(monkeypatch, host):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(ConfigError, match=rf"ray\.dashboard_host '{host}' is not a loopback address"):
        load_config("configs/default.yaml", [f"ray.dashboard_host='{host}'"])
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match=r"ray\.dashboard_host"):
        load_config("configs/default.yaml", [f"ray.dashboard_host='{host}'"])
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # Ray's Jobs API then refuses requests without the token
    assert load_config("configs/default.yaml", [f"ray.dashboard_host='{host}'"]).ray.dashboard_host == host
    monkeypatch.delenv("RAY_AUTH_MODE")
    # a cluster's dashboard is the cluster's business; loopback spellings are all fine
    assert load_config("configs/default.yaml", ["ray.address=ray://head:10001", f"ray.dashboard_host='{host}'"])
    for ok in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert load_config("configs/default.yaml", [f"ray.dashboard_host='{ok}'"]).ray.dashboard_host == ok


def test_min_above_max_words_or_chars_is_rejected_naming_both_keys():
    with pytest.raises(ConfigError, match=r"corpus\.min_words 65 > corpus\.max_words 64"):
        load_config("configs/default.yaml", ["corpus.min_words=65"])
    with pytest.raises(ConfigError, match=r"corpus\.min_chars 20 > corpus\.max_chars 10"):
        load_config("configs/default.yaml", ["corpus.min_chars=20", "corpus.max_chars=10"])
    assert load_config("configs/default.yaml", ["corpus.min_words=64"]).corpus.min_words == 64  # equal: one length


def test_duplicate_languages_are_rejected_also_after_normalising():
    with pytest.raises(ConfigError, match=r"corpus\.langs: duplicate language\(s\) \['de'\]"):
        load_config("configs/default.yaml", ["corpus.langs=[de, fr, de]"])
    with pytest.raises(ConfigError, match=r"corpus\.langs: duplicate language\(s\) \['zh_CN'\]"):
        load_config("configs/default.yaml", ["corpus.langs=[zh_CN, zh-Hans]"])


def test_absurd_max_seq_length_is_rejected_naming_the_key_and_value():
    for key in ("teacher.max_seq_length", "student.max_seq_length"):
        with pytest.raises(ConfigError, match=rf"{key}: Input should be less than or equal to 8192 \(got 100000\)"):
            load_config("configs/default.yaml", [f"{key}=100000"])


def test_max_seq_length_above_the_models_position_limit_is_refused_on_load(tiny_models):
    from mdistill.encode import load_sentence_transformer

    # the tiny models have 128 positions; the config alone cannot know a model's limit
    with pytest.raises(ValueError, match=r"max_seq_length 129 is above the position limit 128 of .*teacher"):
        load_sentence_transformer(str(tiny_models["teacher"]), device="cpu", max_seq_length=129)
    assert load_sentence_transformer(str(tiny_models["teacher"]), device="cpu", max_seq_length=128).max_seq_length == 128


def test_cli_unreadable_config_is_one_line_naming_the_file_exit_2(tmp_path):
    from typer.testing import CliRunner

    from mdistill.cli import app

    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("train:\n  epochs: 2\n  lr: [1e-4\nname: x\n")
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    cases = {
        syntax: rf"config {syntax}:4:5: YAML error: while parsing a flow sequence",
        binary: rf"config {binary}: not a UTF-8 text file \(byte 0x89 at offset 0\)",
        tmp_path: rf"config {tmp_path}: is a directory",
    }
    for path, message in cases.items():
        for command in ("run", "config"):
            r = CliRunner().invoke(app, [command, str(path)])
            assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.exception, r.output)
            assert len(r.output.strip().splitlines()) == 1, r.output
            assert re.search(message, r.output), r.output
    r = CliRunner().invoke(app, ["config", "configs/default.yaml", "train.lr=[1e-4"])
    assert r.exit_code == 2 and "override 'train.lr=[1e-4': not a YAML value" in r.output
