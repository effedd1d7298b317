"""DDTP pairing and gettext catalog discovery on small synthetic files (no network, no apt)."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

import pytest

from mdistill.corpus import debian
from mdistill.corpus.ddtp import iter_ddtp_pairs, parse_description
from mdistill.corpus.debian import _merge, _translation_files, ddtp_lists, ddtp_update_command, gettext_catalogs

EN = """\
Package: alpha
Description-md5: aaaa
Description-en: short alpha
 First paragraph of alpha,
 on two lines.
 .
 Second paragraph of alpha:
   * a verbatim list item

Package: beta
Description-md5: bbbb
Description-en: short beta
 One paragraph.
 .
 Two paragraphs.

Package: gamma
Description-md5: cccc
Description-en: short gamma
"""

DE = """\
Package: alpha
Description-md5: aaaa
Description-de: kurz alpha
 Erster Absatz von alpha,
 auf zwei Zeilen.
 .
 Zweiter Absatz von alpha:
   * ein Listeneintrag

Package: beta
Description-md5: bbbb
Description-de: kurz beta
 Nur ein Absatz statt zwei.

Package: orphan
Description-md5: ffff
Description-de: kurz waise

Package: gamma
Description-md5: cccc
Description-de: kurz gamma
"""


def _files(tmp_path: Path, de: bytes | str = DE) -> tuple[Path, Path]:
    en, xx = tmp_path / "Translation-en", tmp_path / "Translation-de"
    en.write_text(EN)
    xx.write_bytes(de.encode() if isinstance(de, str) else de)
    return en, xx


def test_parse_description_splits_paragraphs():
    d = parse_description(EN.split("\n\n")[0])
    assert d.md5 == "aaaa" and d.short == "short alpha"
    assert d.paragraphs == ["First paragraph of alpha, on two lines.", "Second paragraph of alpha: * a verbatim list item"]


def test_pairs_by_md5_with_paragraphs(tmp_path):
    rows = list(iter_ddtp_pairs(*_files(tmp_path), "de"))
    alpha = [r for r in rows if r.position == 1]
    assert [(r.en, r.text, r.reason) for r in alpha] == [
        ("short alpha", "kurz alpha", None),
        ("First paragraph of alpha, on two lines.", "Erster Absatz von alpha, auf zwei Zeilen.", None),
        ("Second paragraph of alpha: * a verbatim list item", "Zweiter Absatz von alpha: * ein Listeneintrag", None),
    ]
    assert all(r.lang == "de" for r in rows)
    gamma = [r for r in rows if r.position == 4]
    assert [(r.en, r.text, r.reason) for r in gamma] == [("short gamma", "kurz gamma", None)]


def test_paragraph_mismatch_accounts_every_translated_paragraph(tmp_path):
    beta = [r for r in iter_ddtp_pairs(*_files(tmp_path), "de") if r.position == 2]
    assert beta[0] == ("short beta", "kurz beta", "de", 2, None, None)
    assert [(r.en, r.text, r.reason, r.raw) for r in beta[1:]] == [
        (None, "Nur ein Absatz statt zwei.", "missing_field", "Nur ein Absatz statt zwei.")
    ]


def test_no_english(tmp_path):
    orphan = [r for r in iter_ddtp_pairs(*_files(tmp_path), "de") if r.position == 3]
    assert len(orphan) == 1 and orphan[0].reason == "no_english" and orphan[0].text == "kurz waise" and "ffff" in orphan[0].raw


def test_invalid_utf8_is_one_row_and_the_rest_still_pairs(tmp_path):
    bad = DE.encode().replace(b"kurz beta", b"kurz \xff beta")
    rows = list(iter_ddtp_pairs(*_files(tmp_path, bad), "de"))
    beta = [r for r in rows if r.position == 2]
    assert len(beta) == 1 and beta[0].reason == "invalid_utf8" and beta[0].en is None and "kurz" in beta[0].raw
    assert sum(r.reason is None for r in rows) == 4  # alpha (3) + gamma (1)


def test_several_files_and_positions_continue(tmp_path):
    en, xx = _files(tmp_path)
    xx2 = tmp_path / "Translation-de-2"
    xx2.write_text(DE.split("\n\n")[3])  # gamma again
    rows = list(iter_ddtp_pairs([en], [xx, xx2], "de"))
    assert rows[-1] == ("short gamma", "kurz gamma", "de", 5, None, None)


def test_gettext_catalogs_on_fake_tree(tmp_path):
    for d, mo in [("de", "git"), ("de_DE", "coreutils"), ("zh_CN", "git"), ("fr", "dpkg"), ("ja", "git"), ("sr@latin", "git"), ("C", "x")]:
        p = tmp_path / "usr" / "share" / "locale" / d / "LC_MESSAGES" / f"{mo}.mo"
        p.parent.mkdir(parents=True)
        p.write_bytes(b"")
    (tmp_path / "usr/share/locale/de/LC_MESSAGES/readme.txt").write_text("not a catalog")
    got = gettext_catalogs(tmp_path, ["de", "zh-CN", "fr"])
    loc = tmp_path / "usr" / "share" / "locale"
    assert got == [
        ("de", "coreutils", loc / "de_DE/LC_MESSAGES/coreutils.mo"),
        ("de", "git", loc / "de/LC_MESSAGES/git.mo"),
        ("fr", "dpkg", loc / "fr/LC_MESSAGES/dpkg.mo"),
        ("zh_CN", "git", loc / "zh_CN/LC_MESSAGES/git.mo"),
    ]
    assert gettext_catalogs(tmp_path / "missing", ["de"]) == []


def test_gettext_catalogs_of_named_packages_only(tmp_path, monkeypatch):
    """A shared gettext folder accumulates packages; a run naming a few reads only their catalogs,
    and each package's record names its licences (from its DEP-5 copyright file)."""
    trees = {
        "git": ["usr/share/locale/de/LC_MESSAGES/git.mo"],
        "dpkg": ["usr/share/locale/de/LC_MESSAGES/dpkg.mo", "usr/share/locale/fr/LC_MESSAGES/dselect.mo"],
    }
    copyright = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-2\n\nFiles: po/*\nLicense: GPL-2+\n\nFiles: compat/*\nLicense: LGPL-2.1+\n"

    def fake_run(cmd, cwd=None, **kw):
        if cmd[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{cmd[2]}_1.0-1_all.deb").write_bytes(b"")
        elif cmd[:2] == ["dpkg-deb", "-x"]:
            pkg, tree = Path(cmd[2]).name.split("_")[0], Path(cmd[3])
            for rel in trees[pkg]:
                (tree / rel).parent.mkdir(parents=True, exist_ok=True)
                (tree / rel).write_bytes(b"")
            doc = tree / "usr/share/doc" / pkg / "copyright"
            doc.parent.mkdir(parents=True)
            doc.write_text(copyright if pkg == "dpkg" else "free-form statement, no fields")
        return debian.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(debian.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(debian.subprocess, "run", fake_run)
    assert debian.download_packages(["git", "dpkg"], tmp_path) == ["git", "dpkg"]
    loc = tmp_path / "usr/share/locale"
    assert gettext_catalogs(tmp_path, ["de", "fr"], ["git"]) == [("de", "git", loc / "de/LC_MESSAGES/git.mo")]
    assert [c[1] for c in gettext_catalogs(tmp_path, ["de", "fr"], ["dpkg"])] == ["dpkg", "dselect"]
    assert len(gettext_catalogs(tmp_path, ["de", "fr"])) == 3  # no filter: the whole folder
    records = debian.package_records(tmp_path, ["git", "dpkg", "absent"])
    assert records["dpkg"]["licences"] == ["GPL-2", "GPL-2+"]  # Files: * and po/*; not compat/*
    assert records["git"]["licences"] == ["see usr/share/doc/git/copyright"] and "absent" not in records


def test_packages_unpacked_before_contents_records_are_fetched_again(tmp_path, monkeypatch):
    (tmp_path / "packages.txt").write_text("git_1.0-1_all.deb\n")  # an older cache: no contents/git.json
    calls = []

    def fake_run(cmd, cwd=None, **kw):
        calls.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{cmd[2]}_1.0-1_all.deb").write_bytes(b"")
        return debian.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(debian.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(debian.subprocess, "run", fake_run)
    assert debian.download_packages(["git"], tmp_path) == ["git"]
    assert ["apt-get", "download"] in calls and (tmp_path / "contents" / "git.json").is_file()


def test_translation_file_names_and_merge(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en").write_text(EN)
    with gzip.open(lists / "deb.debian.org_debian-security_dists_bookworm-security_main_i18n_Translation-en.gz", "wt") as f:
        f.write("Package: delta\nDescription-md5: dddd\nDescription-en: short delta")  # no final newline
    (lists / "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-zh%5fCN").write_text("")
    (lists / "deb.debian.org_debian_dists_bookworm_InRelease").write_text("")
    found = _translation_files(lists)
    assert sorted(found) == ["en", "zh_CN"] and len(found["en"]) == 2
    _merge(found["en"], tmp_path / "Translation-en")
    xx = tmp_path / "Translation-de"
    xx.write_text("Package: delta\nDescription-md5: dddd\nDescription-de: kurz delta\n\n" + DE)
    rows = list(iter_ddtp_pairs(tmp_path / "Translation-en", xx, "de"))
    assert rows[0] == ("short delta", "kurz delta", "de", 1, None, None)


def test_update_command_uses_private_dirs(tmp_path):
    cmd = " ".join(ddtp_update_command(tmp_path, ["en", "de", "zh_CN"]))
    assert f"Dir::State::Lists={tmp_path}/lists/" in cmd and f"Dir::Cache={tmp_path}/cache/" in cmd
    assert "Acquire::Languages=en,de,zh_CN" in cmd and "/var/lib/apt" not in cmd


def test_ddtp_lists_uses_cache_and_skips_when_not_root(tmp_path, monkeypatch):
    (tmp_path / "Translation-en").write_text(EN)
    (tmp_path / "Translation-de").write_text(DE)
    (tmp_path / "ddtp.json").write_text(json.dumps({"requested": ["en", "de"], "files": {"en": "Translation-en", "de": "Translation-de"}}))
    assert ddtp_lists(["de"], tmp_path) == {"en": tmp_path / "Translation-en", "de": tmp_path / "Translation-de"}
    monkeypatch.setattr(debian.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.warns(UserWarning, match="DDTP package descriptions skipped.*root"):
        assert ddtp_lists(["fr"], tmp_path) is None


def test_download_packages_needs_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get"):
        debian.download_packages(["git"], tmp_path)


def test_download_packages_skips_missing_and_caches(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd=None, **kw):
        calls.append(cmd[:3])
        if cmd[:2] == ["apt-get", "download"]:
            if cmd[2] == "nope":
                return debian.subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package nope\n")
            (Path(cwd) / f"{cmd[2]}_1.0-1_all.deb").write_bytes(b"")
        return debian.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(debian.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(debian.subprocess, "run", fake_run)
    with pytest.warns(UserWarning, match="'nope' is not available"):
        assert debian.download_packages(["git", "nope", "dpkg"], tmp_path) == ["git", "dpkg"]
    assert (tmp_path / "packages.txt").read_text() == "git_1.0-1_all.deb\ndpkg_1.0-1_all.deb\n"
    calls.clear()
    assert debian.download_packages(["git", "dpkg"], tmp_path) == ["git", "dpkg"]
    assert calls == []  # already extracted: no apt call


def fake_seed(root: Path, langs: list[str]) -> Path:
    """A $MDISTILL_DEBIAN_SEED as cluster/Dockerfile builds it (assets.prefetch_debian): the three
    parts of `<cache_dir>/debian` with their markers."""
    from mdistill.corpus.libreoffice import help_lang_dir

    help_root = root / "libreoffice-help" / "usr" / "share" / "libreoffice" / "help"
    for lang in ["en", *langs]:
        (help_root / help_lang_dir(lang) / "text").mkdir(parents=True)
        (help_root / help_lang_dir(lang) / "text" / "a.html").write_text("<p id='1'>x</p>")
    (root / "libreoffice-help" / "packages.txt").write_text("libreoffice-help-de_1.0_all.deb\n")
    mo = root / "gettext" / "usr" / "share" / "locale" / "de" / "LC_MESSAGES" / "git.mo"
    mo.parent.mkdir(parents=True)
    mo.write_bytes(b"\x00")
    (root / "gettext" / "packages.txt").write_text("".join(f"{pkg}_1.0_all.deb\n" for pkg in debian.GETTEXT_PACKAGES))
    (root / "gettext" / "contents").mkdir()
    for pkg in debian.GETTEXT_PACKAGES:
        catalogs = [str(mo.relative_to(root / "gettext"))] if pkg == "git" else []
        record = {"package": pkg, "deb": f"{pkg}_1.0_all.deb", "catalogs": catalogs, "licences": ["GPL-2"]}
        (root / "gettext" / "contents" / f"{pkg}.json").write_text(json.dumps(record))
    (root / "ddtp").mkdir()
    (root / "ddtp" / "Translation-en").write_text(EN)
    (root / "ddtp" / "Translation-de").write_text(DE)
    (root / "ddtp" / "ddtp.json").write_text(
        json.dumps({"requested": ["en", "de"], "files": {"en": "Translation-en", "de": "Translation-de"}})
    )
    return root


def test_pod_plans_the_debian_corpus_from_the_image_seed_without_apt_or_root(tmp_path, monkeypatch):
    """A RayJob pod: non-root, apt-get present but without lists (any apt call fails), empty
    cache_dir on the PVC. The run's own planning finds every part, copied from the seed."""
    from mdistill import assets
    from mdistill.config import SourceConfig
    from mdistill.stages.corpus import debian_units

    def no_apt(cmd, *a, **kw):
        raise AssertionError(f"apt called in a pod: {cmd}")

    monkeypatch.setenv(debian.SEED_ENV, str(fake_seed(tmp_path / "seed", ["de"])))
    monkeypatch.setattr(debian.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(assets.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(debian.subprocess, "run", no_apt)
    monkeypatch.setattr(assets.subprocess, "run", no_apt)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    cache = tmp_path / "data" / "cache"
    units, identity = debian_units(SourceConfig(format="debian", parts=["libreoffice", "gettext", "ddtp"]), ["de"], cache)
    assert {u["source"] for u in units} == {"libreoffice", "gettext:git", "ddtp"}
    assert [u["licence"] for u in units if u["source"] == "gettext:git"] == ["GPL-2"]
    assert all(str(cache) in json.dumps(u) for u in units)  # read from the (shared) cache, not the image
    assert "libreoffice-help-de_1.0_all.deb" in identity and "git_1.0_all.deb" in identity
    assert sorted(p.name for p in (cache / "debian").iterdir()) == ["ddtp", "gettext", "libreoffice-help"]  # no temp left


def test_seed_never_overwrites_a_cache_that_holds_something(tmp_path, monkeypatch):
    monkeypatch.setenv(debian.SEED_ENV, str(fake_seed(tmp_path / "seed", ["de"])))
    dest = tmp_path / "cache" / "debian" / "gettext"
    dest.mkdir(parents=True)
    (dest / "packages.txt").write_text("git_2.0_all.deb\n")
    assert debian.seed_from_image(dest) is False
    assert (dest / "packages.txt").read_text() == "git_2.0_all.deb\n"
    monkeypatch.delenv(debian.SEED_ENV)
    assert debian.seed_from_image(tmp_path / "cache" / "debian" / "ddtp") is False  # no seed: no-op


def test_prefetch_debian_fails_when_a_part_was_not_fetched(tmp_path, monkeypatch):
    """An image build must not ship without DDTP (the run would only warn, in every pod)."""
    from mdistill import assets
    from mdistill.stages import corpus as corpus_stage

    def fetch_all_but_ddtp(src, langs, cache_dir):
        fetched = fake_seed(Path(tempfile.mkdtemp(dir=tmp_path)), langs)
        (cache_dir / "debian").mkdir(parents=True, exist_ok=True)
        for part in ("libreoffice-help", "gettext"):
            if not (cache_dir / "debian" / part).exists():
                (fetched / part).rename(cache_dir / "debian" / part)
        return [], ""

    monkeypatch.setattr(corpus_stage, "debian_units", fetch_all_but_ddtp)
    config = tmp_path / "c.yaml"
    config.write_text("name: c\ncorpus:\n  langs: [de]\n  sources: [{format: debian, parts: [libreoffice, gettext, ddtp]}]\n")
    with pytest.raises(RuntimeError, match=r"\['ddtp'\] were not fetched"):
        assets.prefetch_debian(config, tmp_path / "cache")
    config.write_text("name: c\ncorpus:\n  langs: [de]\n  sources: [{format: debian, parts: [libreoffice, gettext]}]\n")
    assert assets.prefetch_debian(config, tmp_path / "cache") == (tmp_path / "cache" / "debian").resolve()


def test_ddtp_identity_holds_the_recorded_versions(tmp_path):
    """A Translation edit that keeps the file size is another corpus once versions are recorded;
    a cache without them (fetched before) keeps the identity it had (no rebuild)."""
    from mdistill.config import SourceConfig
    from mdistill.stages.corpus import debian_units

    ddtp = tmp_path / "debian" / "ddtp"
    ddtp.mkdir(parents=True)
    (ddtp / "Translation-en").write_text(EN)
    (ddtp / "Translation-de").write_text(DE)
    marker = {"requested": ["en", "de"], "files": {"en": "Translation-en", "de": "Translation-de"}}
    src = SourceConfig(format="debian", parts=["ddtp"])
    identities = []
    for versions in (None, {"en": "1111", "de": "2222"}, {"en": "1111", "de": "3333"}):
        (ddtp / "ddtp.json").write_text(json.dumps(marker | ({"versions": versions} if versions else {})))
        identities.append(debian_units(src, ["de"], tmp_path)[1])
    sizes = [[str(ddtp / "Translation-en"), len(EN)], [str(ddtp / "Translation-de"), len(DE.encode())]]
    assert identities[0] == json.dumps(sizes)  # as before versions were recorded
    assert len(set(identities)) == 3 and '"de": "3333"' in identities[2]
