"""Upstream versions of the Debian corpus inputs (mdistill.corpus.upstream), as ``mdistill schedule``
checks them: parsing real apt output (captured on Debian 12, apt 2.6.1, 2026-12-02), the decision
(changed / unchanged / new / gone / check failed) on recorded versions, and the refresh of a cached
part. No network and no apt by default; ``MDISTILL_APT_TESTS=1`` adds one check against the archive."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mdistill.config import SourceConfig
from mdistill.corpus import debian, upstream
from mdistill.corpus.upstream import UpstreamCheckError, check_upstream, compare_versions, parse_print_uris

# `apt-get download --print-uris git nope-pkg mail-transport-agent nope2 gettext` against private
# lists: exit 100, yet the packages that exist are still listed.
PRINT_URIS_STDOUT = """\
'http://deb.debian.org/debian/pool/main/g/gettext/gettext_0.21-12_amd64.deb' gettext_0.21-12_amd64.deb 1300056 SHA256:8c1f9d43575373ce311f51d00a13afbb4888d63aa559a93a3472f5d77513b60c
'http://deb.debian.org/debian/pool/main/g/git/git_2.39.5-0%2bdeb12u3_amd64.deb' git_1%3a2.39.5-0+deb12u3_amd64.deb 7264380 SHA256:637a85ddd6247fab13bdd0592f2f39aff04ce4dbf0655d3ab553ac359a38ce6f
"""
PRINT_URIS_STDERR = """\
E: Unable to locate package nope-pkg
E: Can't select candidate version from package mail-transport-agent as it has no candidate
E: Unable to locate package nope2
"""
# `apt-get download --print-uris libreoffice-help-de postgresql-15 libc-l10n` (exit 0)
PRINT_URIS_OK = """\
'http://deb.debian.org/debian/pool/main/libr/libreoffice/libreoffice-help-de_7.4.7-1%2bdeb12u14_all.deb' libreoffice-help-de_4%3a7.4.7-1+deb12u14_all.deb 3293908 SHA256:00490b63c509ac96f7f212d6a6e40452d3e0d1f97ccf4b824dd5ec4c01e8277f
'http://deb.debian.org/debian/pool/main/g/glibc/libc-l10n_2.36-9%2bdeb12u14_all.deb' libc-l10n_2.36-9+deb12u14_all.deb 676384 SHA256:95285badd0b02ca7e90e8f20d17c912170ffaeb48db10f113d1ece042b59248d
'http://deb.debian.org/debian-security/pool/updates/main/p/postgresql-15/postgresql-15_15.20-0%2bdeb12u1_amd64.deb' postgresql-15_15.20-0+deb12u1_amd64.deb 17091392 SHA256:8566850f295c2cb5034ff5dd5b40caf97eea81b75a841c8d1f691c05ab8815db
"""
# `apt-get update` (private lists) without network, *without* APT::Update::Error-Mode=any: exit 0
UPDATE_OFFLINE_STDERR = """\
W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)
W: Failed to fetch http://deb.debian.org/debian/dists/bookworm-updates/InRelease  Unable to connect to 127.0.0.1:9:
W: Failed to fetch http://deb.debian.org/debian-security/dists/bookworm-security/InRelease  Unable to connect to 127.0.0.1:9:
W: Some index files failed to download. They have been ignored, or old ones used instead.
"""

SOURCES = [SourceConfig(format="debian", parts=["libreoffice", "gettext", "ddtp"], packages=["git", "gettext"])]
WANTED = {
    "libreoffice": ["libreoffice-help-de", "libreoffice-help-en-us"],
    "gettext": ["gettext", "git"],
    "ddtp": ["Translation-de", "Translation-en"],
}


def test_parse_real_print_uris_output_and_missing_names():
    assert parse_print_uris(PRINT_URIS_STDOUT) == {"gettext": "0.21-12", "git": "1:2.39.5-0+deb12u3"}
    assert parse_print_uris(PRINT_URIS_OK) == {
        "libreoffice-help-de": "4:7.4.7-1+deb12u14",
        "libc-l10n": "2.36-9+deb12u14",
        "postgresql-15": "15.20-0+deb12u1",
    }
    assert upstream._missing(PRINT_URIS_STDERR) == ({"nope-pkg", "mail-transport-agent", "nope2"}, [])
    assert upstream._missing("E: Could not get lock /x/lists/lock\n")[1] == ["E: Could not get lock /x/lists/lock"]


def test_recorded_versions_come_from_the_names_the_build_wrote(tmp_path):
    """packages.txt holds the .deb names (real ones here); the same parse as the archive's answer."""
    (tmp_path / "libreoffice-help").mkdir()
    (tmp_path / "libreoffice-help" / "packages.txt").write_text(
        "libreoffice-help-de_4%3a7.4.7-1+deb12u14_all.deb\nlibreoffice-help-en-us_4%3a7.4.7-1+deb12u14_all.deb\n"
    )
    (tmp_path / "gettext").mkdir()
    (tmp_path / "gettext" / "packages.txt").write_text("git_1%3a2.39.2-1.1_amd64.deb\ngit_1%3a2.39.5-0+deb12u3_amd64.deb\n")
    got = upstream.recorded_versions(tmp_path, ["libreoffice", "gettext", "ddtp"])
    assert got == {
        "libreoffice": {"libreoffice-help-de": "4:7.4.7-1+deb12u14", "libreoffice-help-en-us": "4:7.4.7-1+deb12u14"},
        "gettext": {"git": "1:2.39.5-0+deb12u3"},  # a later line (a re-fetch) wins
        "ddtp": {},  # never fetched
    }


def test_decision_changed_unchanged_new_gone():
    recorded = {
        "libreoffice": {"libreoffice-help-de": "4:7.4.7-1+deb12u13", "libreoffice-help-en-us": "4:7.4.7-1+deb12u14"},
        "gettext": {"git": "1:2.39.5-0+deb12u3", "gettext": "0.21-12", "libfoo": "1.0"},
        "ddtp": {"Translation-en": "aaaa", "Translation-de": "bbbb"},
    }
    archive = {
        "libreoffice": {"libreoffice-help-de": "4:7.4.7-1+deb12u14", "libreoffice-help-en-us": "4:7.4.7-1+deb12u14"},
        "gettext": {"git": "1:2.39.5-0+deb12u3"},
        "ddtp": {"Translation-en": "aaaa", "Translation-de": "cccc", "Translation-fr": "dddd"},
    }
    wanted = {**WANTED, "gettext": ["gettext", "git", "postgresql-15"]}
    assert compare_versions(recorded, recorded, wanted) == []  # unchanged
    changes = {c["name"]: (c["kind"], c["old"], c["new"]) for c in compare_versions(recorded, archive, wanted)}
    assert changes == {
        "libreoffice-help-de": ("changed", "4:7.4.7-1+deb12u13", "4:7.4.7-1+deb12u14"),
        "gettext": ("gone", "0.21-12", None),
        "Translation-de": ("changed", "bbbb", "cccc"),
    }  # postgresql-15: in neither; libfoo, Translation-fr: not read by this config
    new = compare_versions({}, archive, {"gettext": ["git"]})
    assert new == [{"part": "gettext", "name": "git", "kind": "new", "old": None, "new": "1:2.39.5-0+deb12u3"}]
    assert upstream.describe(new[0]) == "git new (1:2.39.5-0+deb12u3)"
    assert upstream.describe(compare_versions(recorded, archive, {"ddtp": ["Translation-de"]})[0]) == "Translation-de bbbb -> cccc"


def fake_archive(monkeypatch, versions: dict, refreshed: list, fail_refresh: set = frozenset()):
    """The archive answers ``versions`` (no apt); refresh_part records the parts it is asked for."""
    monkeypatch.setattr(upstream, "upstream_versions", lambda fetch, apt_dir: {p: dict(versions.get(p, {})) for p in fetch})

    def refresh(debian_dir, part, got, apt_dir, requested):
        if part in fail_refresh:
            raise RuntimeError("not fetched as the archive listed them: git")
        refreshed.append(part)

    monkeypatch.setattr(upstream, "refresh_part", refresh)


def seed_cache(debian_dir: Path) -> None:
    (debian_dir / "gettext").mkdir(parents=True)
    (debian_dir / "gettext" / "packages.txt").write_text("git_1%3a2.39.2-1.1_amd64.deb\ngettext_0.21-12_amd64.deb\n")


def test_check_unchanged_changed_and_refresh_failed(tmp_path, monkeypatch):
    cache, logs, refreshed = tmp_path / "cache", [], []
    seed_cache(cache / "debian")
    src = [SourceConfig(format="debian", parts=["gettext"], packages=["git", "gettext"])]
    same = {"gettext": {"git": "1:2.39.2-1.1", "gettext": "0.21-12"}}
    fake_archive(monkeypatch, same, refreshed)
    up = check_upstream(src, ["de"], cache, tmp_path / "apt", logs.append)
    assert up["ok"] and up["changes"] == [] and up["applied"] == [] and refreshed == []
    assert up["versions"] == same

    newer = {"gettext": {"git": "1:2.39.5-0+deb12u3", "gettext": "0.21-12"}}
    fake_archive(monkeypatch, newer, refreshed)
    up = check_upstream(src, ["de"], cache, tmp_path / "apt", logs.append)
    assert refreshed == ["gettext"] and [c["name"] for c in up["applied"]] == ["git"]
    assert "upstream gettext: git 1:2.39.2-1.1 -> 1:2.39.5-0+deb12u3" in logs

    fake_archive(monkeypatch, newer, refreshed := [], fail_refresh={"gettext"})
    up = check_upstream(src, ["de"], cache, tmp_path / "apt", logs.append)
    assert up["ok"] and len(up["changes"]) == 1 and up["applied"] == [] and "gettext" in up["refresh_errors"]
    assert any(line.startswith("warning:") and "not refreshed" in line for line in logs)


def test_check_failed_is_a_warning_not_an_error(tmp_path, monkeypatch):
    logs = []
    monkeypatch.setattr(upstream.shutil, "which", lambda name: None)  # no apt at all
    up = check_upstream(SOURCES, ["de"], tmp_path / "cache", tmp_path / "apt", logs.append)
    assert up == {"ok": False, "error": "apt-get is not available (not Debian/Ubuntu)", "changes": [], "applied": []} | {
        "refreshed": [],
        "refresh_errors": {},
        "versions": {},
    }
    assert logs == [
        "warning: the Debian sources' upstream versions could not be checked (apt-get is not available (not Debian/Ubuntu));"
        " deciding on the cached versions"
    ]
    assert check_upstream([SourceConfig(format="tsv", paths=["x.tsv"])], ["de"], tmp_path, tmp_path / "apt", logs.append) is None


def test_offline_update_fails_the_check_even_when_apt_exits_0(tmp_path, monkeypatch):
    """apt-get update keeps the old lists and exits 0 without network: that must not read as "unchanged"."""
    calls = []

    def fake_run(cmd, *a, **kw):
        calls.append(cmd)
        if cmd[0] == "apt-config":
            return subprocess.CompletedProcess(
                cmd, 0, 'Acquire::IndexTargets::deb::Packages "";\nAcquire::IndexTargets::deb::DEP-11 "";\n', ""
            )
        return subprocess.CompletedProcess(cmd, 0, "Reading package lists...\n", UPDATE_OFFLINE_STDERR)

    monkeypatch.setattr(upstream.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(UpstreamCheckError, match="apt-get update into .* failed .*Some index files failed"):
        upstream.upstream_versions({"gettext": ["git"]}, tmp_path / "apt")
    update = calls[-1]
    assert update[:2] == ["apt-get", "update"] and "APT::Update::Error-Mode=any" in update
    assert f"Dir::State::Lists={tmp_path / 'apt' / 'lists'}/" in update and not any("/var/lib/apt" in c for c in update)
    assert 'deb::DEP-11::DefaultEnabled "false"' in (tmp_path / "apt" / "apt.conf").read_text()  # Packages kept
    assert "deb::Packages" not in (tmp_path / "apt" / "apt.conf").read_text()


def test_package_versions_with_a_missing_name_is_one_call(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, *a, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 100, PRINT_URIS_STDOUT, PRINT_URIS_STDERR)

    monkeypatch.setattr(subprocess, "run", fake_run)
    got = upstream.package_versions(["git", "nope-pkg", "mail-transport-agent", "nope2", "gettext"], tmp_path)
    assert got == {"gettext": "0.21-12", "git": "1:2.39.5-0+deb12u3"} and len(calls) == 1
    assert calls[0][:3] == ["apt-get", "download", "--print-uris"] and f"Dir::Cache={tmp_path / 'cache'}/" in calls[0]

    monkeypatch.setattr(subprocess, "run", lambda cmd, *a, **kw: subprocess.CompletedProcess(cmd, 100, "", "E: Could not open lock file\n"))
    with pytest.raises(UpstreamCheckError, match="Could not open lock file"):
        upstream.package_versions(["git"], tmp_path)


def fake_apt_download(monkeypatch, version: str, calls: list):
    """apt-get download writes <pkg>_<version>_all.deb; dpkg-deb -x unpacks one file named after it."""

    def fake_run(cmd, cwd=None, **kw):
        calls.append(cmd)
        if cmd[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{cmd[-1]}_{version.replace(':', '%3a')}_all.deb").write_bytes(b"")
        elif cmd[0] == "dpkg-deb":
            deb, dest = Path(cmd[2]), Path(cmd[3])
            (dest / "usr").mkdir(parents=True, exist_ok=True)
            (dest / "usr" / deb.name.split("_")[1]).write_text(deb.name)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(debian.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(subprocess, "run", fake_run)


def test_refresh_replaces_a_part_whole_and_keeps_it_when_the_fetch_differs(tmp_path, monkeypatch):
    debian_dir = tmp_path / "debian"
    old = debian_dir / "gettext"
    (old / "usr").mkdir(parents=True)
    (old / "usr" / "1.0").write_text("a file of the old version")
    (old / "packages.txt").write_text("git_1.0_all.deb\n")
    calls = []
    fake_apt_download(monkeypatch, "1:2.0", calls)
    upstream.refresh_part(debian_dir, "gettext", {"git": "1:2.0"}, tmp_path / "apt")
    assert (old / "packages.txt").read_text() == "git_1%3a2.0_all.deb\n"
    assert sorted(p.name for p in (old / "usr").iterdir()) == ["1%3a2.0"]  # nothing of 1.0 left behind
    assert [p.name for p in debian_dir.iterdir()] == ["gettext"]  # no temporary folder left
    assert f"Dir::State::Lists={tmp_path / 'apt' / 'lists'}/" in calls[0]  # fetched from the checked lists

    fake_apt_download(monkeypatch, "3.0", calls)  # the archive moved on since the check
    with pytest.raises(RuntimeError, match="not fetched as the archive listed them: git"):
        upstream.refresh_part(debian_dir, "gettext", {"git": "1:2.0"}, tmp_path / "apt")
    assert (old / "packages.txt").read_text() == "git_1%3a2.0_all.deb\n" and [p.name for p in debian_dir.iterdir()] == ["gettext"]


def test_ddtp_versions_are_recorded_and_refreshed_from_the_checked_lists(tmp_path):
    lists = tmp_path / "apt" / "lists"
    lists.mkdir(parents=True)
    stanza = "Package: a\nDescription-md5: 1\nDescription-{c}: {t}\n"
    (lists / "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en").write_text(stanza.format(c="en", t="short"))
    (lists / "deb.debian.org_debian_dists_bookworm-updates_main_i18n_Translation-en").write_text(stanza.format(c="en", t="other"))
    (lists / "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-de").write_text(stanza.format(c="de", t="kurz"))
    found = debian._translation_files(lists)
    versions = {upstream.ddtp_key(c): debian.translation_digest(found[c]) for c in ("en", "de")}
    upstream.refresh_part(tmp_path / "debian", "ddtp", versions, tmp_path / "apt", ["Translation-en", "Translation-de", "Translation-xx"])
    ddtp = tmp_path / "debian" / "ddtp"
    marker = json.loads((ddtp / "ddtp.json").read_text())
    assert marker["versions"] == {"en": versions["Translation-en"], "de": versions["Translation-de"]}
    assert marker["requested"] == ["en", "de", "xx"]  # xx: none in the archive, not asked for again by the build
    assert (ddtp / "Translation-en").read_text() == stanza.format(c="en", t="other") + "\n\n" + stanza.format(c="en", t="short") + "\n\n"
    assert upstream.recorded_versions(tmp_path / "debian", ["ddtp"]) == {"ddtp": versions}
    # a cache fetched before versions were recorded: the digest of its merged files is the same
    (ddtp / "ddtp.json").write_text(json.dumps({k: v for k, v in marker.items() if k != "versions"}))
    assert upstream.recorded_versions(tmp_path / "debian", ["ddtp"]) == {"ddtp": versions}
    with pytest.raises(RuntimeError, match="no Translation-en"):
        upstream.refresh_part(tmp_path / "debian", "ddtp", {"Translation-de": versions["Translation-de"]}, tmp_path / "apt")


@pytest.mark.skipif(os.environ.get("MDISTILL_APT_TESTS") != "1" or shutil.which("apt-get") is None, reason="asks the Debian archive")
def test_real_archive_check_and_refresh(tmp_path):
    """The real thing: private lists, an outdated cached git, refreshed from the archive; a second
    check finds nothing. Run with MDISTILL_APT_TESTS=1 on Debian/Ubuntu with network (~30 s)."""
    seed_cache(tmp_path / "cache" / "debian")
    src = [SourceConfig(format="debian", parts=["gettext", "ddtp"], packages=["git", "gettext", "no-such-package-mdistill"])]
    logs = []
    up = check_upstream(src, ["de"], tmp_path / "cache", tmp_path / "apt", logs.append)
    assert up["ok"], logs
    assert {c["name"] for c in up["applied"]} >= {"git", "Translation-en", "Translation-de"}
    assert up["refreshed"] == ["ddtp", "gettext"]
    again = check_upstream(src, ["de"], tmp_path / "cache", tmp_path / "apt", logs.append)
    assert again["ok"] and again["changes"] == []
