"""Model registry: versions, the `latest` alias and the promotion gate; register_run from a report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mdistill.config import RegistryConfig, load_config
from mdistill.registry import ModelRegistry, register_run, register_run_students

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


# -- hardening: names, incomplete models, non-finite metrics, corrupt files ------------------------


def _outside(tmp_path: Path) -> list[Path]:
    """Everything under tmp_path that is not the registry root or the source models."""
    return sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "models") and not p.is_relative_to(tmp_path / "src"))


@pytest.mark.parametrize("bad", ["../../x", "..", "a/b", ".hidden", "", "a..b", "x" * 129, "-x"])
def test_names_that_could_leave_the_root_are_refused_by_every_entry_point(tmp_path, bad):
    from mdistill.registry import RegistryError

    root = tmp_path / "models" / "root"
    reg = ModelRegistry(root)
    _reg(reg, tmp_path, "a", 0.9)
    before = _outside(tmp_path)
    for call in (
        lambda: reg.register(bad, _model(tmp_path, "b"), {KEY: 0.9}, key_metric=KEY),
        lambda: reg.promote(bad, "v0001"),
        lambda: reg.show(bad),
        lambda: reg.versions(bad),
        lambda: reg.latest(bad),
    ):
        with pytest.raises(RegistryError, match="not a valid name"):
            call()
    assert _outside(tmp_path) == before and reg.names() == ["e5-x"]  # nothing created anywhere


@pytest.mark.parametrize("bad", ["../../../outside", "../e5-y/v0001", "latest", "v1", "v0001/..", ""])
def test_versions_must_be_vNNNN_so_latest_never_points_out(tmp_path, bad):
    from mdistill.registry import RegistryError

    reg = ModelRegistry(tmp_path / "models")
    _reg(reg, tmp_path, "a", 0.9)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "entry.json").write_text(json.dumps({"key_metric": KEY, "metrics": {KEY: 1.0}}))
    with pytest.raises(RegistryError, match="is not a version"):
        reg.promote("e5-x", bad, force=True)
    with pytest.raises(RegistryError, match="is not a version"):
        reg.show("e5-x", bad or "x")
    d = tmp_path / "models" / "e5-x"
    assert os.readlink(d / "latest") == "v0001" and json.loads((outside / "entry.json").read_text())["metrics"][KEY] == 1.0


def test_a_name_folder_symlinked_out_of_the_root_is_refused(tmp_path):
    from mdistill.registry import RegistryError

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "evil").symlink_to(tmp_path / "elsewhere")
    reg = ModelRegistry(tmp_path / "models")
    with pytest.raises(RegistryError, match="outside"):
        reg.register("evil", _model(tmp_path, "a"), {KEY: 0.9}, key_metric=KEY)
    assert list((tmp_path / "elsewhere").iterdir()) == [] and reg.names() == []


def test_a_corrupt_alias_is_not_followed_and_names_its_file(tmp_path):
    from mdistill.registry import RegistryError

    reg = ModelRegistry(tmp_path / "models")
    _reg(reg, tmp_path, "a", 0.9)
    meta = tmp_path / "models" / "e5-x" / "latest.json"
    meta.write_text(json.dumps({"version": "../../outside"}))
    with pytest.raises(RegistryError, match=rf"{meta}: corrupt alias"):
        reg.latest("e5-x")
    meta.write_text("{not json")
    with pytest.raises(RegistryError, match=rf"{meta}: corrupt JSON at line 1 column 2"):
        reg.show("e5-x")


def test_a_model_folder_without_modules_json_is_refused_even_forced(tmp_path):
    from mdistill.registry import RegistryError

    reg = ModelRegistry(tmp_path / "models")
    incomplete = _model(tmp_path, "half")
    (incomplete / "modules.json").unlink()
    with pytest.raises(RegistryError, match=rf"{incomplete}: incomplete model \(no modules.json\)"):
        reg.register("e5-x", incomplete, {KEY: 0.9}, key_metric=KEY)
    assert reg.versions("e5-x") == []
    # a version that lost its modules.json (copied in by hand, older registry) is never made latest
    _reg(reg, tmp_path, "a", 0.8)
    _reg(reg, tmp_path, "b", 0.7)
    v2 = tmp_path / "models" / "e5-x" / "v0002"
    (v2 / "modules.json").unlink()
    with pytest.raises(RegistryError, match=rf"{v2}: incomplete model"):
        reg.promote("e5-x", "v0002", force=True)
    assert reg.latest("e5-x")["version"] == "v0001"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_candidate_is_registered_but_never_promoted(tmp_path, bad):
    reg = ModelRegistry(tmp_path / "models")
    r = _reg(reg, tmp_path, "a", bad)  # first version: no current latest either
    assert not r["promoted"] and "not a finite number" in r["reason"] and reg.latest("e5-x") is None
    _reg(reg, tmp_path, "b", 0.9)
    r = _reg(reg, tmp_path, "c", bad)
    assert not r["promoted"] and reg.latest("e5-x")["version"] == "v0002"
    assert not reg.promote("e5-x", "v0003")["promoted"]


def test_a_nan_current_latest_does_not_block_a_finite_candidate(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    _reg(reg, tmp_path, "a", 0.9)
    _reg(reg, tmp_path, "b", float("nan"))
    reg.promote("e5-x", "v0002", force=True)  # a NaN latest, as an older registry let through
    r = _reg(reg, tmp_path, "c", 0.5)
    assert r["promoted"] and reg.latest("e5-x")["version"] == "v0003"
    assert "current latest v0002's key metric is nan, not a finite number: not comparable" in r["reason"]
    reg.promote("e5-x", "v0002", force=True)
    r = reg.promote("e5-x", "v0001")  # the manual path goes through the same gate
    assert r["promoted"] and "not comparable" in r["reason"]


def test_models_cli_errors_are_one_line_naming_the_file_exit_2(tmp_path):
    from typer.testing import CliRunner

    from mdistill.cli import app

    root = tmp_path / "models"
    reg = ModelRegistry(root)
    _reg(reg, tmp_path, "a", 0.9)
    cli = CliRunner()

    def err(*args: str) -> tuple[int, str]:
        r = cli.invoke(app, [*args])
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception  # no traceback
        return r.exit_code, r.output

    code, out = err("models", "promote", "../../x", "v0001", "--root", str(root))
    assert code == 2 and "model name '../../x' is not a valid name" in out and not (tmp_path.parent / "x").exists()
    code, out = err("models", "promote", "e5-x", "../../../outside", "--root", str(root))
    assert code == 2 and "'../../../outside'" in out and "is not a version" in out
    code, out = err("models", "promote", "nope", "v0001", "--root", str(root))
    assert code == 1 and "no model 'nope'" in out and not (root / "nope").exists()

    entry = root / "e5-x" / "v0001" / "entry.json"
    entry.write_text('{"version": "v0001",')
    for args in (["models", "show", "e5-x"], ["models", "list"]):
        code, out = err(*args, "--root", str(root))
        assert code == 2 and f"{entry}: corrupt JSON at line 1" in out and len(out.strip().splitlines()) == 1

    run = tmp_path / "run"
    run.mkdir()
    code, out = err("models", "register", str(run), f"registry.root={root}")
    assert code == 2 and f"{run / 'report.json'}: no report" in out
    (run / "report.json").write_text("{broken")
    code, out = err("models", "register", str(run), f"registry.root={root}")
    assert code == 2 and f"{run / 'report.json'}: not a valid RunReport" in out
    code, out = err("models", "register", str(run), "--name", "../up", f"registry.root={root}")
    assert code == 2 and "--name '../up' is not a valid name" in out


def test_register_run_students_registers_every_student_once_under_name_dash_student(tmp_path):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    report = run_report("demo", {"small": (str(_model(tmp_path, "s")), 0.9), "big": (str(_model(tmp_path, "b")), 0.95)})
    (run / "report.json").write_text(report.model_dump_json())
    cfg = load_config(None, [f"registry.root={tmp_path / 'models'}"]).registry
    results, errors = register_run_students(run, cfg)
    assert errors == {} and {s: (r["name"], r["version"], r["candidate"]) for s, r in results.items()} == {
        "small": ("demo-small", "v0001", 0.9),
        "big": ("demo-big", "v0001", 0.95),
    }
    # a caller that died before recording these results asks again: found, not registered twice
    again, errors = register_run_students(run, cfg)
    assert errors == {} and {s: r["version"] for s, r in again.items()} == {"small": "v0001", "big": "v0001"}
    assert "already registered" in again["big"]["reason"]
    reg = ModelRegistry(cfg.root)
    assert [v["version"] for v in reg.versions("demo-small")] == ["v0001"] and [v["version"] for v in reg.versions("demo-big")] == ["v0001"]
    # a lone student keeps the plain name
    solo = tmp_path / "runs" / "solo"
    solo.mkdir()
    (solo / "report.json").write_text(run_report("solo", {"only": (str(_model(tmp_path, "o")), 0.8)}).model_dump_json())
    assert register_run_students(solo, cfg)[0]["only"]["name"] == "solo"
