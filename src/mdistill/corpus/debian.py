"""Debian assets for the real parallel corpus: translation packages and DDTP index files.

Nothing is installed. Packages are fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x`` into a cache folder (no root needed), so a corpus is built from named package
versions rather than from whatever happens to be installed. DDTP (package-description
translations) are apt index files, not packages: they are fetched by ``apt-get update`` into a
private lists folder (root needed; the system's apt state is never touched).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from mdistill.corpus.langs import normalize_lang, try_normalize_lang
from mdistill.corpus.libreoffice import help_lang_dir

# Packages whose gettext catalogs (.mo) are the corpus (each one's licence: its copyright file,
# recorded in contents/<pkg>.json and the corpus manifest's ``licences``). postgresql-15 is the major in Debian 12
# (bookworm); on another release it is reported as unavailable and skipped.
GETTEXT_PACKAGES: list[str] = [
    "postgresql-15",
    "git",
    "gnupg-l10n",
    "coreutils",
    "libc-l10n",
    "dpkg",
    "libdpkg-perl",
    "libgtk2.0-common",
    "libglib2.0-data",
    "binutils-common",
    "gettext",
    "appstream",
    "gsettings-desktop-schemas",
    "libkrb5-3",
    # Issue 14: more projects and translators, so the student sees UI text beyond a few tools
    # (desktop apps, system tools, a mail client, a spreadsheet, accounting, media players).
    "apt",
    "aptitude-common",
    "bash",
    "debconf-i18n",
    "diffutils",
    "e2fsprogs-l10n",
    "evince-common",
    "findutils",
    "gawk",
    "gedit-common",
    "gnome-control-center-data",
    "gnome-shell-common",
    "gnucash-common",
    "gnumeric-common",
    "grep",
    "kbd",
    "libgphoto2-l10n",
    "lynx-common",
    "make",
    "man-db",
    "mc-data",
    "mutt",
    "nano",
    "nautilus-data",
    "poedit-common",
    "procps",
    "psmisc",
    "pulseaudio",
    "rhythmbox-data",
    "sed",
    "sharutils",
    "shotwell-common",
    "tar",
    "totem-common",
    "util-linux-locales",
    "vlc-l10n",
    "wget",
    "xfce4-session",
]

APT_TIMEOUT_S = 900  # a hung mirror must not hang the corpus build forever

# A folder laid out like ``<cache_dir>/debian`` (libreoffice-help/, gettext/, ddtp/), fetched when an
# image is built (cluster/Dockerfile, as root): pods run as a non-root user (no DDTP fetch), without
# apt lists and maybe without internet, so a part missing from the cache is copied from here.
SEED_ENV = "MDISTILL_DEBIAN_SEED"


def seed_from_image(dest: Path) -> bool:
    """Fill an absent or empty ``dest`` with ``$MDISTILL_DEBIAN_SEED/<dest.name>``; True if copied.

    A cache that already holds something is left alone (it may be newer or hold more languages).
    The copy goes to a temporary sibling first, so a crash leaves no half-seeded cache behind.
    """
    seed = os.environ.get(SEED_ENV)
    src = Path(seed) / dest.name if seed else None
    if src is None or not src.is_dir() or (dest.is_dir() and any(dest.iterdir())):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-seed-", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, symlinks=True, dirs_exist_ok=True)
        if dest.is_dir():
            dest.rmdir()  # empty (checked above)
        tmp.rename(dest)
    except OSError:
        if dest.is_dir() and any(dest.iterdir()):
            return False  # another process seeded it first
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _require_apt() -> None:
    """Fail early with a useful message on systems without apt (not Debian/Ubuntu)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(
            "the Debian corpus needs apt-get and dpkg-deb (Debian/Ubuntu); point corpus.sources at your own files (tsv, csv, jsonl, parquet, hf, tmx, po, mo) instead"
        )


def help_package(lang: str) -> str:
    """The Debian package of a language's LibreOffice help (``zh_CN`` -> ``libreoffice-help-zh-cn``)."""
    return "libreoffice-help-" + help_lang_dir(lang).lower()


def deb_version(deb: str) -> tuple[str, str]:
    """``(package, version)`` of a .deb file name as apt writes it (``git_1%3a2.39.5-0+deb12u3_amd64.deb``
    -> ``("git", "1:2.39.5-0+deb12u3")``): ``packages.txt`` records these names, so versions too."""
    name, version = unquote(deb).split("_")[:2]
    return name, version


def _extracted(dest: Path) -> dict[str, str]:
    """Package name -> .deb file name of what is already unpacked in ``dest`` (``packages.txt``)
    and has its contents record (``contents/<pkg>.json``; a package unpacked before records
    existed is fetched again, once, so its catalogs are known)."""
    marker = dest / "packages.txt"
    if not marker.exists():
        return {}
    debs = [line.strip() for line in marker.read_text().splitlines() if line.strip()]
    return {deb.split("_")[0]: deb for deb in debs if (dest / "contents" / f"{deb.split('_')[0]}.json").is_file()}


def copyright_licences(text: str) -> list[str]:
    """The licences a Debian copyright file (DEP-5) gives the package's text: the ``License:`` of
    the ``Files: *`` paragraph and of paragraphs naming translations (``po/``, ``*.po``), distinct,
    in order; every distinct ``License:`` when no paragraph matches; ``[]`` for a free-form file."""
    main: list[str] = []
    every: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:[ \t]*(.*(?:\n[ \t]+.*)*)", para, re.MULTILINE)
        lic = re.search(r"^License:[ \t]*(\S[^\n]*)$", para, re.MULTILINE)
        if lic is None:
            continue
        name = lic.group(1).strip()
        every += [] if name in every else [name]
        patterns = files.group(1).split() if files else []
        if ("*" in patterns or any("po/" in f or f.endswith(".po") for f in patterns)) and name not in main:
            main.append(name)
    return main or every


def _record(pkg: str, deb: str, tree: Path) -> dict:
    """What one unpacked package holds that the corpus uses: its catalogs and its licences."""
    locale = tree / "usr" / "share" / "locale"
    catalogs = sorted(str(p.relative_to(tree)) for p in locale.glob("*/LC_MESSAGES/*.mo")) if locale.is_dir() else []
    cp = tree / "usr" / "share" / "doc" / pkg / "copyright"
    licences = copyright_licences(cp.read_text(errors="replace")) if cp.is_file() else []
    if not licences:  # free-form copyright, or none shipped (a doc link to another package): say so
        licences = [f"see usr/share/doc/{pkg}/copyright" if cp.is_file() else "not stated in the package (no copyright file)"]
    return {"package": pkg, "deb": deb, "catalogs": catalogs, "licences": licences}


def package_records(dest: Path, pkgs: Iterable[str]) -> dict[str, dict]:
    """The contents records (``_record``) of the unpacked ``pkgs`` in ``dest``; absent ones left out."""
    out = {}
    for pkg in pkgs:
        f = dest / "contents" / f"{pkg}.json"
        if f.is_file():
            out[pkg] = json.loads(f.read_text())
    return out


def _download_one(pkg: str, dest: Path, apt_options: list[str] | None = None) -> str | None:
    """Fetch and unpack one package; its .deb name, or None (with a warning) if apt has no such package.

    One apt call per package: ``apt-get download a b c`` fails as a whole when one name is missing.
    ``apt_options`` (``private_apt_options``): fetch what a private, fresh set of lists names.
    Each package is also unpacked into a scratch folder, so ``contents/<pkg>.json`` can list the
    catalogs it owns: a run that names a few packages reads only theirs, not every package the
    shared folder has accumulated.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["apt-get", "download", *(apt_options or []), pkg]
        r = subprocess.run(cmd, check=False, cwd=tmp, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
        debs = sorted(Path(tmp).glob("*.deb"))
        if r.returncode != 0 or not debs:
            warnings.warn(
                f"Debian package {pkg!r} is not available in this release, skipped: {r.stderr.strip().splitlines()[-1:]}", stacklevel=3
            )
            return None
        tree = Path(tmp) / "tree"
        tree.mkdir()
        for deb in debs:  # twice: alone (what it owns) and into the shared folder (dpkg-deb replaces links there)
            for into in (tree, dest):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True, capture_output=True)
        (dest / "contents").mkdir(parents=True, exist_ok=True)
        (dest / "contents" / f"{pkg}.json").write_text(json.dumps(_record(pkg, debs[0].name, tree), indent=1))
        with (dest / "packages.txt").open("a") as f:  # versions: part of the corpus fingerprint
            f.writelines(deb.name + "\n" for deb in debs)
        return debs[0].name


def download_packages(pkgs: list[str], dest: Path) -> list[str]:
    """Unpack ``pkgs`` into ``dest`` (cached by ``dest/packages.txt`` and ``dest/contents/``); the
    names that are available.

    A name this release lacks is skipped with a warning, so a list written for one Debian release
    still builds on another.
    """
    seed_from_image(dest)
    _require_apt()
    dest.mkdir(parents=True, exist_ok=True)
    done = _extracted(dest)
    return [pkg for pkg in pkgs if pkg in done or _download_one(pkg, dest) is not None]


def _locale_lang(dirname: str) -> str | None:
    """mdistill code of a locale folder (``de_DE`` -> ``de``); None for ``@`` variants and non-languages.

    ``sr@latin``, ``ca@valencia``, ``en@quot`` are script/variant catalogs of a language that also
    has a plain folder; mixing them in would duplicate or mix scripts, so they are left out.
    """
    return None if "@" in dirname else try_normalize_lang(dirname)


def gettext_catalogs(root: Path, langs: list[str], packages: Iterable[str] | None = None) -> list[tuple[str, str, Path]]:
    """``(lang, domain, path)`` of every ``usr/share/locale/<dir>/LC_MESSAGES/*.mo`` for ``langs``, sorted;
    with ``packages``, only the catalogs those packages own (their ``contents`` records).

    The domain (the .mo file name: ``git``, ``coreutils``, ``gtk20``) labels the source. Several
    folders may map to one language (``de`` and ``de_DE``): all are returned.
    """
    wanted = {normalize_lang(lang) for lang in langs}
    if packages is None:
        mos = list((root / "usr" / "share" / "locale").glob("*/LC_MESSAGES/*.mo"))
    else:
        mos = [root / c for r in package_records(root, packages).values() for c in r["catalogs"]]
    found = []
    for mo in mos:
        lang = _locale_lang(mo.parent.parent.name)
        if lang in wanted and mo.is_file():
            found.append((lang, mo.stem, mo))
    return sorted(found)


def _skip_ddtp(why: str) -> None:
    """Say once, clearly, that DDTP is left out and why (it is optional, the build goes on)."""
    warnings.warn(f"DDTP package descriptions skipped: {why}. The rest of the corpus is still built.", stacklevel=3)


def _private_apt_conf(dest: Path, keep: tuple[str, ...] = ("deb::Translations",)) -> Path:
    """An apt config for a side-effect-free ``apt-get update`` that fetches only the ``keep`` index targets.

    It drops the system's post-update hooks (appstream, packagekit refresh the *system* caches) and
    disables every other index target (DDTP keeps only Translations: Packages alone is ~9 MB per update).
    """
    dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=True).stdout
    targets = sorted(set(re.findall(r"^Acquire::IndexTargets::(deb(?:-src)?::[^:\s]+)", dump, re.MULTILINE)) - set(keep))
    lines = ["#clear APT::Update::Pre-Invoke;", "#clear APT::Update::Post-Invoke;", "#clear APT::Update::Post-Invoke-Success;"]
    lines += [f'Acquire::IndexTargets::{t}::DefaultEnabled "false";' for t in targets]
    conf = dest / "apt.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def private_apt_options(dest: Path) -> list[str]:
    """apt options that read and write ``dest/{apt.conf,lists,cache}`` instead of the system's apt state."""
    return ["-c", str(dest / "apt.conf"), "-o", f"Dir::State::Lists={dest / 'lists'}/", "-o", f"Dir::Cache={dest / 'cache'}/"]


def ddtp_update_command(dest: Path, codes: list[str]) -> list[str]:
    """The ``apt-get update`` that fetches Translation-<code> files into ``dest/lists`` only.

    Lists and cache are private folders; ``GzipIndexes=false`` stores the files uncompressed (the
    image keeps them .lz4); ``List-Cleanup=0`` keeps files of languages fetched earlier.
    """
    return [
        "apt-get",
        "update",
        *private_apt_options(dest),
        "-o",
        f"Acquire::Languages={','.join(codes)}",
        "-o",
        "Acquire::GzipIndexes=false",
        "-o",
        "APT::Get::List-Cleanup=0",
    ]


@contextmanager
def _open_index(path: Path) -> Iterator[BinaryIO]:
    """An apt index file as bytes, whatever compression apt stored it with."""
    openers = {".gz": gzip.open, ".xz": lzma.open, ".lzma": lzma.open, ".bz2": bz2.open}
    tools = {".lz4": ["lz4", "-dc"], ".zst": ["zstd", "-dc"]}
    if path.suffix in openers:
        with openers[path.suffix](path, "rb") as f:
            yield f
    elif path.suffix in tools:
        with subprocess.Popen([*tools[path.suffix], str(path)], stdout=subprocess.PIPE) as p:
            yield p.stdout
        if p.returncode != 0:
            raise RuntimeError(f"cannot decompress {path} with {tools[path.suffix][0]}")
    else:
        with path.open("rb") as f:
            yield f


_TRANSLATION = re.compile(r"_i18n_Translation-([^.]+)(\.[a-z0-9]+)?$")


def _translation_files(lists: Path) -> dict[str, list[Path]]:
    """Code (``en``, ``zh_CN``) -> its Translation files, one per suite/component, sorted.

    apt names them ``<host>_<path>_dists_<suite>_<component>_i18n_Translation-<code>[.<comp>]``
    with the code URL-quoted (``zh%5fCN``).
    """
    files: dict[str, list[Path]] = {}
    for p in sorted(lists.glob("*_i18n_Translation-*")):
        m = _TRANSLATION.search(p.name)
        code = try_normalize_lang(unquote(m.group(1))) if m else None
        if code is not None:
            files.setdefault(code, []).append(p)
    return files


def _merged_chunks(paths: list[Path]) -> Iterator[bytes]:
    """The bytes of the merged stanza file of ``paths`` (decompressed, each followed by a blank line)."""
    for p in paths:
        with _open_index(p) as f:
            while chunk := f.read(1 << 20):
                yield chunk
        yield b"\n\n"  # a file without a final blank line must not glue stanzas


def _digest(chunks: Iterable[bytes]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def translation_digest(paths: list[Path]) -> str:
    """The version of a DDTP language: a digest of its merged Translation content (index files carry
    no version). Equal to ``_merge``'s digest of the same files, whatever their compression."""
    return _digest(_merged_chunks(paths))


def merged_digest(path: Path) -> str:
    """``translation_digest`` of a file ``_merge`` wrote (a cache fetched before versions were recorded)."""
    with path.open("rb") as f:
        return _digest(iter(lambda: f.read(1 << 20), b""))


def _merge(paths: list[Path], out: Path) -> str:
    """Concatenate index files (decompressed) into one plain stanza file; its ``translation_digest``."""
    tmp = out.with_suffix(".tmp")
    h = hashlib.blake2b(digest_size=8)  # as _digest, while writing: one pass over the files
    with tmp.open("wb") as w:
        for chunk in _merged_chunks(paths):
            w.write(chunk)
            h.update(chunk)
    tmp.replace(out)
    return h.hexdigest()


def ddtp_marker(dest: Path) -> dict:
    """What an earlier fetch into ``dest`` requested and produced (``ddtp.json``), or ``{}``."""
    marker = dest / "ddtp.json"
    return json.loads(marker.read_text()) if marker.exists() else {}


def ddtp_lists(langs: list[str], dest: Path) -> dict[str, Path] | None:
    """``{"en": path, lang: path}``: one plain Translation file per language, merged over suites.

    Fetched once into ``dest`` (``ddtp.json`` marks what was fetched). Returns None, with a warning,
    when apt cannot run (no apt, not root) or the update fails: DDTP is an optional source.
    Languages the archive has no translations for are warned about and left out of the result.
    """
    wanted = list(dict.fromkeys(["en"] + [normalize_lang(lang) for lang in langs]))
    seed_from_image(dest)
    done = ddtp_marker(dest)
    if set(wanted) <= set(done.get("requested", [])):
        return {code: dest / name for code, name in done["files"].items() if code in wanted}
    codes = wanted + [c for c in done.get("requested", []) if c not in wanted]  # keep earlier languages
    if shutil.which("apt-get") is None:
        _skip_ddtp("apt-get is not available (not Debian/Ubuntu)")
        return None
    if getattr(os, "geteuid", lambda: -1)() != 0:
        _skip_ddtp("fetching apt Translation files needs root (apt-get update), and this process is not root")
        return None
    (dest / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (dest / "cache").mkdir(parents=True, exist_ok=True)
    _private_apt_conf(dest)
    cmd = ddtp_update_command(dest, codes)
    try:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _skip_ddtp(f"apt-get update did not finish in {APT_TIMEOUT_S} s")
        return None
    if r.returncode != 0:
        _skip_ddtp(f"apt-get update failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
        return None
    found = _translation_files(dest / "lists")
    if "en" not in found:
        _skip_ddtp(f"apt-get update fetched no Translation-en into {dest / 'lists'}")
        return None
    files = write_ddtp(dest, found, codes, cmd)
    return {code: dest / name for code, name in files.items() if code in wanted}


def write_ddtp(dest: Path, found: dict[str, list[Path]], codes: list[str], command: list[str]) -> dict[str, str]:
    """Merge the Translation files ``found`` of ``codes`` into ``dest/Translation-<code>`` and write
    ``ddtp.json`` (what was requested, the files, their versions: ``translation_digest``, so a later
    check can tell whether the archive changed); code -> file name."""
    files, versions = {}, {}
    for code in codes:
        if code not in found:
            warnings.warn(f"DDTP has no translations for {code!r} in this release; left out", stacklevel=3)
            continue
        versions[code] = _merge(found[code], dest / f"Translation-{code}")
        files[code] = f"Translation-{code}"
    marker = {"requested": codes, "files": files, "versions": versions, "command": command}
    (dest / "ddtp.json").write_text(json.dumps(marker, indent=1))
    return files
