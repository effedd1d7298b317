"""Model registry: versions, the `latest` alias and the promotion gate; register_run from a report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mdistill.config import RegistryConfig, load_config
from mdistill.registry import ModelRegistry, register_run

from report_fixtures import KEY, run_report


def _model(tmp_path: Path, tag: str) -> Path:
    d = tmp_path / "src" / tag
    (d / "1_Pooling").mkdir(parents=True)
    (d / "modules.json").write_text("[]")
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"tag": tag}))
    return d


def _reg(reg, tmp_path, tag, value, **kw):
    return reg.register("e5-x", _model(tmp_path, tag), {KEY: value, "mse100": 0.2}, key_metric=KEY, **kw)


def test_gate_layout_and_alias(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    assert reg.names() == [] and reg.latest("e5-x") is None

    r1 = _reg(reg, tmp_path, "a", 0.90, tolerance=0.005)
    assert r1["promoted"] and r1["version"] == "v0001" and r1["current"] is None
    d = tmp_path / "models" / "e5-x"
    assert (d / "v0001" / "modules.json").is_file() and (d / "v0001" / "1_Pooling" / "config.json").is_file()
    assert os.readlink(d / "latest") == "v0001" and (d / "latest" / "entry.json").is_file()
    assert json.loads((d / "latest.json").read_text())["version"] == "v0001"

    # worse beyond tolerance: registered, not promoted, latest unchanged
    r2 = _reg(reg, tmp_path, "b", 0.88, tolerance=0.005)
    assert r2["version"] == "v0002" and not r2["promoted"] and r2["current"] == 0.90 and r2["candidate"] == 0.88
    assert reg.latest("e5-x")["version"] == "v0001" and os.readlink(d / "latest") == "v0001"
    assert (d / "v0002" / "entry.json").is_file() and reg.show("e5-x", "v0002")["promoted"] is False

    # slightly worse, within tolerance: promoted
    r3 = _reg(reg, tmp_path, "c", 0.897, tolerance=0.005)
    assert r3["promoted"] and reg.latest("e5-x")["version"] == "v0003"

    # better: promoted
    r4 = _reg(reg, tmp_path, "d", 0.93, tolerance=0.0)
    assert r4["promoted"] and r4["current"] == 0.897 and reg.latest("e5-x")["version"] == "v0004"
    assert json.loads((d / "latest" / "1_Pooling" / "config.json").read_text())["tag"] == "d"

    vs = reg.versions("e5-x")
    assert [v["version"] for v in vs] == ["v0001", "v0002", "v0003", "v0004"]
    assert [v["latest"] for v in vs] == [False, False, False, True]
    assert vs[1]["gate"]["reason"].startswith("0.88 <") and reg.names() == ["e5-x"]
    assert reg.show("e5-x")["version"] == "v0004"
    with pytest.raises(KeyError):
        reg.show("e5-x", "v0042")


def test_mode_min(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    m = _model(tmp_path, "a")
    assert reg.register("m", m, {"mse100": 0.20}, key_metric="mse100", mode="min")["promoted"]
    assert not reg.register("m", m, {"mse100": 0.25}, key_metric="mse100", mode="min", tolerance=0.01)["promoted"]
    assert reg.register("m", m, {"mse100": 0.205}, key_metric="mse100", mode="min", tolerance=0.01)["promoted"]


def test_manual_promote_and_force(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    _reg(reg, tmp_path, "a", 0.90)
    _reg(reg, tmp_path, "b", 0.80)
    r = reg.promote("e5-x", "v0002")
    assert not r["promoted"] and reg.latest("e5-x")["version"] == "v0001"
    assert reg.promote("e5-x", "v0002", tolerance=0.2)["promoted"]  # within a wider tolerance
    assert reg.promote("e5-x", "v0002")["reason"] == "already latest"
    reg.promote("e5-x", "v0002", force=True)
    r = reg.promote("e5-x", "v0001", force=False)  # back to the better one: passes the gate
    assert r["promoted"] and reg.latest("e5-x")["version"] == "v0001"
    _reg(reg, tmp_path, "c", 0.50)
    r = reg.promote("e5-x", "v0003", force=True)
    assert r["promoted"] and r["reason"] == "forced" and reg.latest("e5-x")["version"] == "v0003"
    assert reg.show("e5-x", "v0003")["promoted"] is True


def test_crash_mid_copy_leaves_no_half_version(tmp_path, monkeypatch):
    reg = ModelRegistry(tmp_path / "models")
    _reg(reg, tmp_path, "a", 0.90)
    d = tmp_path / "models" / "e5-x"
    # a crash after copying part of a version: a temp folder without entry.json is left behind
    half = d / ".tmp-v0002-deadbeef"
    (half / "1_Pooling").mkdir(parents=True)
    (half / "modules.json").write_text("[]")
    assert [v["version"] for v in reg.versions("e5-x")] == ["v0001"] and reg.latest("e5-x")["version"] == "v0001"

    # a copy that fails mid-way raises, cleans its temp folder and creates no version
    import shutil

    def broken_copytree(src, dst, **kw):
        Path(dst).mkdir()
        (Path(dst) / "partial").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copytree", broken_copytree)
    with pytest.raises(OSError, match="disk full"):
        _reg(reg, tmp_path, "b", 0.95)
    monkeypatch.undo()
    assert [v["version"] for v in reg.versions("e5-x")] == ["v0001"]
    assert not [p for p in d.iterdir() if p.name.startswith(".tmp-") and p != half]
    assert _reg(reg, tmp_path, "c", 0.95)["version"] == "v0002"  # numbering continues cleanly


def test_latest_json_without_symlink(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    _reg(reg, tmp_path, "a", 0.90)
    _reg(reg, tmp_path, "b", 0.95)
    (tmp_path / "models" / "e5-x" / "latest").unlink()  # a filesystem without symlinks
    assert reg.latest("e5-x")["version"] == "v0002"


def test_register_run(tmp_path):
    run = tmp_path / "runs" / "demo"
    model = _model(tmp_path, "run")
    report = run_report("demo", {"small": (str(model), 0.9), "big": (str(model), 0.95)}, teacher="all-MiniLM-L6-v2")
    run.mkdir(parents=True)
    (run / "report.json").write_text(report.model_dump_json())
    cfg = load_config(None, [f"registry.root={tmp_path / 'models'}"]).registry
    assert isinstance(cfg, RegistryConfig) and cfg.tolerance == 0.005 and cfg.key_metric == KEY
    r = register_run(run, cfg)
    assert r["name"] == "demo" and r["version"] == "v0001" and r["promoted"] and r["candidate"] == 0.9
    e = ModelRegistry(cfg.root).show("demo")
    assert e["info"]["student"] == "small" and e["info"]["teacher"] == "all-MiniLM-L6-v2" and e["metrics"]["mse100"] == 0.2
    assert e["info"]["per_language"]["de"][KEY] == 0.9
    r = register_run(run, cfg.model_copy(update={"name": "demo-big"}), name="big")
    assert r["name"] == "demo-big" and r["candidate"] == 0.95


def test_models_cli(tmp_path):
    from typer.testing import CliRunner

    from mdistill.cli import app

    run = tmp_path / "run"
    run.mkdir()
    model = _model(tmp_path, "m")
    root = str(tmp_path / "models")

    def report(v):
        (run / "report.json").write_text(run_report("demo", {"s": (str(model), v)}).model_dump_json())

    cli = CliRunner()
    report(0.9)
    r = cli.invoke(app, ["models", "register", str(run), f"registry.root={root}"])
    assert r.exit_code == 0 and "v0001" in r.output and "promoted to latest" in r.output, r.output
    report(0.5)
    r = cli.invoke(app, ["models", "register", str(run), "--name", "demo", f"registry.root={root}"])
    assert r.exit_code == 0 and "NOT promoted" in r.output, r.output
    r = cli.invoke(app, ["models", "list", "--root", root])
    assert "* demo" in r.output and "v0002" in r.output and "not promoted" in r.output, r.output
    r = cli.invoke(app, ["models", "show", "demo", "--root", root])
    assert json.loads(r.output)["version"] == "v0001"
    r = cli.invoke(app, ["models", "promote", "demo", "v0002", "--root", root])
    assert r.exit_code == 1 and "NOT promoted" in r.output
    r = cli.invoke(app, ["models", "promote", "demo", "v0002", "--force", "--root", root])
    assert r.exit_code == 0 and ModelRegistry(root).latest("demo")["version"] == "v0002"
    assert cli.invoke(app, ["models", "show", "demo", "v0009", "--root", root]).exit_code == 1
