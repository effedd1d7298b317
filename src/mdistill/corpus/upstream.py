"""Upstream versions of the built-in corpus's Debian inputs, checked by ``mdistill schedule``.

The corpus build caches what it fetched in ``<cache_dir>/debian`` and never looks again (the .deb
names in ``packages.txt``, the Translation digests in ``ddtp.json``), and ``apt-get download``
reads the system's apt lists, which may be as old as the image. So the check asks the archive: an
``apt-get update`` into a private folder (``-o Dir::State::Lists=<apt_dir>/lists/``, the system's
lists are never touched), then ``apt-get download --print-uris`` against those lists gives the
version a download would fetch now, and the fetched Translation files give DDTP's digests.

A changed or new input refreshes its part of the cache from the same private lists (fetched into a
temporary sibling, swapped in whole, so no file of an older version is left behind): the cached
versions, hence the corpus fingerprint, then say what was detected, and the run that follows is
built from it. Nothing here imports Ray.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from mdistill.corpus import debian
from mdistill.corpus.langs import normalize_lang

PART_DIRS = {"libreoffice": "libreoffice-help", "gettext": "gettext", "ddtp": "ddtp"}  # under <cache_dir>/debian
TRIGGERS = ("changed", "new")  # kinds of change that refresh the cache and start a run ("gone" does not)
CHECK_TIMEOUT_S = 300  # per apt call: a hung mirror must not hold the scheduler's tick for long

Versions = dict[str, dict[str, str]]  # part -> input (package name, or Translation-<code>) -> version


class UpstreamCheckError(RuntimeError):
    """The archive could not be asked (no apt, no network, ...): the message says why."""


def ddtp_key(code: str) -> str:
    return f"Translation-{code}"


def _code(key: str) -> str:
    return key.removeprefix("Translation-")


def wanted_inputs(sources: Iterable, langs: list[str]) -> dict[str, list[str]]:
    """Part -> the inputs the config's ``format: debian`` sources read (``{}``: it has none)."""
    wanted: dict[str, set[str]] = {}
    for src in sources:
        if src.format != "debian":
            continue
        if "libreoffice" in src.parts:
            wanted.setdefault("libreoffice", set()).update(debian.help_package(lang) for lang in ["en", *langs])
        if "gettext" in src.parts:
            wanted.setdefault("gettext", set()).update(src.packages or debian.GETTEXT_PACKAGES)
        if "ddtp" in src.parts:
            wanted.setdefault("ddtp", set()).update(ddtp_key(normalize_lang(code)) for code in ["en", *langs])
    return {part: sorted(keys) for part, keys in wanted.items()}


def recorded_versions(debian_dir: Path, parts: Iterable[str]) -> Versions:
    """The versions the cache holds: what the last corpus built from it read. An empty cache is first
    seeded from the image, as the run would (``$MDISTILL_DEBIAN_SEED``); a part never fetched: ``{}``."""
    out: Versions = {}
    for part in parts:
        debian.seed_from_image(debian_dir / PART_DIRS[part])
        out[part] = _recorded_in(debian_dir / PART_DIRS[part], part)
    return out


def _recorded_in(folder: Path, part: str) -> dict[str, str]:
    """The versions one part's folder records (``packages.txt``, ``ddtp.json``)."""
    if part == "ddtp":
        marker = debian.ddtp_marker(folder)
        versions = marker.get("versions")
        if versions is None:  # fetched before versions were recorded: the merged files say it
            files = marker.get("files", {})
            versions = {code: debian.merged_digest(folder / name) for code, name in files.items() if (folder / name).is_file()}
        return {ddtp_key(code): v for code, v in versions.items()}
    marker = folder / "packages.txt"
    return dict(debian.deb_version(deb) for deb in (marker.read_text().split() if marker.exists() else []))  # a later line wins


def upstream_update_command(apt_dir: Path, codes: list[str]) -> list[str]:
    """The DDTP update (``debian.ddtp_update_command``: private lists and cache) that also fails on
    any index it could not fetch: by default apt exits 0 without network and keeps the old lists,
    which would read as "nothing changed"."""
    return [*debian.ddtp_update_command(apt_dir, codes), "-o", "APT::Update::Error-Mode=any"]


_FETCH_FAILED = re.compile(r"^[WE]: (Failed to fetch|Some index files failed)", re.MULTILINE)  # apt without Error-Mode


def _tail(stderr: str, n: int = 3) -> str:
    return " | ".join(stderr.strip().splitlines()[-n:]) or "no message"


def _apt_update(apt_dir: Path, fetch: dict[str, list[str]], timeout: float) -> None:
    if shutil.which("apt-get") is None:
        raise UpstreamCheckError("apt-get is not available (not Debian/Ubuntu)")
    (apt_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt_dir / "cache").mkdir(parents=True, exist_ok=True)
    keep = (("deb::Packages",) if set(fetch) - {"ddtp"} else ()) + (("deb::Translations",) if "ddtp" in fetch else ())  # only what is read
    try:
        debian._private_apt_conf(apt_dir, keep)
    except (OSError, subprocess.CalledProcessError) as e:
        raise UpstreamCheckError(f"apt-config dump failed: {e}") from e
    cmd = upstream_update_command(apt_dir, [_code(k) for k in fetch.get("ddtp", [])] or ["none"])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UpstreamCheckError(f"apt-get update did not finish in {timeout:.0f} s") from None
    if r.returncode != 0 or _FETCH_FAILED.search(r.stderr):
        raise UpstreamCheckError(f"apt-get update into {apt_dir / 'lists'} failed (exit {r.returncode}): {_tail(r.stderr)}")


# 'URI' FILE SIZE HASH, one line per package (``apt-get download --print-uris``)
_URI_LINE = re.compile(r"^'[^']+' (\S+\.deb) \d+ \S*$")
# what apt says of a name the archive lacks (any other error is a failed check, not a missing package)
_MISSING = re.compile(
    r"^E: (?:Unable to locate package (\S+)$|Can't select candidate version from package (\S+) as"
    r"|Package '?([^\s']+)'? has no installation candidate)"
)


def _missing(stderr: str) -> tuple[set[str], list[str]]:
    """The names apt reports as not in the archive, and its other error lines."""
    missing, errors = set(), []
    for line in stderr.splitlines():
        m = _MISSING.match(line.strip())
        if m:
            missing.add(next(g for g in m.groups() if g))
        elif line.startswith("E:"):
            errors.append(line.strip())
    return missing, errors


def parse_print_uris(text: str) -> dict[str, str]:
    """Package -> version from ``apt-get download --print-uris`` output (the .deb name apt would write)."""
    out = {}
    for line in text.splitlines():
        m = _URI_LINE.match(line.strip())
        if m:
            name, version = debian.deb_version(m.group(1))
            out[name] = version
    return out


def package_versions(pkgs: list[str], apt_dir: Path, timeout: float = CHECK_TIMEOUT_S) -> dict[str, str]:
    """The version ``apt-get download`` would fetch of each package, against the private lists; a
    package the archive lacks is left out (as the corpus build skips it)."""

    def ask(names: list[str]) -> subprocess.CompletedProcess:
        cmd = ["apt-get", "download", "--print-uris", *debian.private_apt_options(apt_dir), *names]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise UpstreamCheckError(f"apt-get download --print-uris did not finish in {timeout:.0f} s") from None

    r = ask(pkgs)
    out = parse_print_uris(r.stdout)  # apt 2.6 still lists the others when a name is missing (exit 100)
    if r.returncode == 0:
        return out
    missing, errors = _missing(r.stderr)
    if errors:
        raise UpstreamCheckError(f"apt-get download --print-uris failed (exit {r.returncode}): {' | '.join(errors[-3:])}")
    for pkg in [p for p in pkgs if p not in out and p not in missing]:  # an apt that stops at the first missing name
        r = ask([pkg])
        out.update(parse_print_uris(r.stdout))
        if r.returncode != 0 and _missing(r.stderr)[1]:
            raise UpstreamCheckError(f"apt-get download --print-uris {pkg} failed (exit {r.returncode}): {_tail(r.stderr)}")
    return out


def upstream_versions(fetch: dict[str, list[str]], apt_dir: Path, timeout: float = CHECK_TIMEOUT_S) -> Versions:
    """What a fetch would get now, per part, for the inputs in ``fetch`` (part -> package names or
    Translation-<code>): ``apt-get update`` into ``apt_dir`` (private), then the candidates' versions
    and the Translation digests. Raises ``UpstreamCheckError`` when the archive cannot be asked."""
    _apt_update(apt_dir, fetch, timeout)
    pkgs = sorted({p for part in ("libreoffice", "gettext") for p in fetch.get(part, [])})
    versions = package_versions(pkgs, apt_dir, timeout) if pkgs else {}
    out: Versions = {part: {k: versions[k] for k in keys if k in versions} for part, keys in fetch.items() if part != "ddtp"}
    if "ddtp" in fetch:
        found = debian._translation_files(apt_dir / "lists")
        out["ddtp"] = {k: debian.translation_digest(found[_code(k)]) for k in fetch["ddtp"] if _code(k) in found}
    return out


def compare_versions(recorded: Versions, upstream: Versions, wanted: dict[str, list[str]]) -> list[dict]:
    """The changes of the wanted inputs, cache -> archive: ``changed`` (another version), ``new`` (in the
    archive, not in the cache: never fetched, or unavailable until now), ``gone`` (cached, no longer in
    the archive: not a trigger, the cached copy builds until its part is refreshed for another change).
    Unchanged inputs, and those in neither, are left out."""
    changes = []
    for part, keys in wanted.items():
        for key in keys:
            old, new = recorded.get(part, {}).get(key), upstream.get(part, {}).get(key)
            if old != new:
                kind = "new" if old is None else "gone" if new is None else "changed"
                changes.append({"part": part, "name": key, "kind": kind, "old": old, "new": new})
    return changes


def describe(change: dict) -> str:
    """One change as a log line: ``git 1:2.39.5-0+deb12u2 -> 1:2.39.5-0+deb12u3``."""
    name, old, new = change["name"], change["old"], change["new"]
    if change["kind"] == "new":
        return f"{name} new ({new})"
    if change["kind"] == "gone":
        return f"{name} no longer in the archive (cached: {old})"
    return f"{name} {old} -> {new}"


def _swap(tmp: Path, dest: Path) -> None:
    """Put ``tmp`` where ``dest`` is; the old copy is removed only once the new one is in place."""
    old = dest.with_name(f".{dest.name}-old-{uuid.uuid4().hex[:8]}")
    if dest.exists():
        dest.rename(old)
    try:
        tmp.rename(dest)
    except OSError:
        if old.exists():
            old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def refresh_part(debian_dir: Path, part: str, versions: dict[str, str], apt_dir: Path, requested: list[str] | None = None) -> None:
    """Fetch ``versions`` (what the check saw) of one part into a fresh folder from the private lists
    and swap it in for ``<debian_dir>/<part>``. Raises (the cache unchanged) unless exactly those
    versions were fetched: the archive may have moved on since the check, or a download failed.
    ``requested`` (DDTP): the inputs asked for, recorded in ``ddtp.json`` even where the archive has
    none, so that the build does not ask again."""
    dest = debian_dir / PART_DIRS[part]
    debian_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-refresh-", dir=debian_dir))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from the job's (other) user on shared storage
    try:
        with warnings.catch_warnings(record=True) as caught:  # apt's reasons go into the error, not stderr
            warnings.simplefilter("always")
            if part == "ddtp":
                if ddtp_key("en") not in versions:
                    raise RuntimeError("the archive has no Translation-en: DDTP pairs cannot be built")
                codes = list(dict.fromkeys([_code(k) for k in [*versions, *(requested or [])]]))
                found = debian._translation_files(apt_dir / "lists")
                debian.write_ddtp(tmp, found, codes, upstream_update_command(apt_dir, codes))
            else:
                debian._require_apt()
                for pkg in sorted(versions):
                    debian._download_one(pkg, tmp, debian.private_apt_options(apt_dir))
        got = _recorded_in(tmp, part)
        if got != versions:
            wrong = sorted(k for k in versions if got.get(k) != versions[k])
            why = "; ".join(str(w.message) for w in caught)
            raise RuntimeError(f"not fetched as the archive listed them: {', '.join(wrong)}" + (f" ({why})" if why else ""))
        _swap(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_upstream(sources: Iterable, langs: list[str], cache_dir: Path, apt_dir: Path, log: Callable[[str], None]) -> dict | None:
    """Compare the cached Debian inputs of ``sources`` with the archive and refresh the parts that
    changed; None when no source is ``format: debian``. Never raises: a check that fails is logged as
    a warning and reported (``ok: False``), and the caller decides as it did without it.

    Returns {ok, error, changes (every difference), applied (the triggering changes whose part was
    refreshed: the cache now holds them), refreshed (parts), refresh_errors (part -> why), versions
    (the archive's versions of the wanted inputs)}."""
    wanted = wanted_inputs(sources, langs)
    if not wanted:
        return None
    debian_dir = cache_dir / "debian"
    try:
        recorded = recorded_versions(debian_dir, wanted)
        # the cache may hold more than this config reads (other languages, other configs): refreshed too
        fetch = {part: sorted(set(keys) | set(recorded.get(part, {}))) for part, keys in wanted.items()}
        upstream = upstream_versions(fetch, apt_dir)
    except Exception as e:  # no network, no apt, a hung mirror: this tick decides on the cached versions
        reason = str(e) if isinstance(e, UpstreamCheckError) else f"{type(e).__name__}: {e}"
        log(f"warning: the Debian sources' upstream versions could not be checked ({reason}); deciding on the cached versions")
        return {"ok": False, "error": reason, "changes": [], "applied": [], "refreshed": [], "refresh_errors": {}, "versions": {}}
    changes = compare_versions(recorded, upstream, wanted)
    for c in changes:
        log(f"upstream {c['part']}: {describe(c)}")
    refreshed, errors = [], {}
    for part in sorted({c["part"] for c in changes if c["kind"] in TRIGGERS}):
        try:
            refresh_part(debian_dir, part, upstream[part], apt_dir, fetch[part])
        except Exception as e:  # the cache keeps the old versions; the next due tick checks again
            errors[part] = f"{type(e).__name__}: {e}"
            log(f"warning: {debian_dir / PART_DIRS[part]} not refreshed ({errors[part]}); its upstream changes wait for the next tick")
            continue
        refreshed.append(part)
        log(f"upstream: refreshed {debian_dir / PART_DIRS[part]} ({len(upstream[part])} inputs) from the archive")
    return {
        "ok": True,
        "error": None,
        "changes": changes,
        "applied": [c for c in changes if c["kind"] in TRIGGERS and c["part"] in refreshed],
        "refreshed": refreshed,
        "refresh_errors": errors,
        "versions": {part: {k: upstream[part][k] for k in keys if k in upstream[part]} for part, keys in wanted.items()},
    }
