"""Corpus stage: parallel text in any supported format -> cleaned, deduplicated, split Parquet.

    sources --plan--> read units --map_batches(read)--> rows --map_batches(clean)--> staged by bucket
    staged bucket --map_batches(finish: dedup)--> pairs/ quarantine/ english/ + manifest.json

Streaming: a unit (a file, a byte range of a big file) is read as a generator of Arrow tables;
no stage holds the corpus. Every row read is kept (``pairs/``) or rejected with its reason
(``quarantine/``), and the manifest checks rows in = kept + rejected per language, source and file.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import ray

from mdistill.assets import debian_help_root, source_identity
from mdistill.config import CorpusConfig, SourceConfig
from mdistill.corpus.clean import clean_table
from mdistill.corpus.dedup import finish_bucket
from mdistill.corpus.libreoffice import list_help_files
from mdistill.corpus.manifest import build_manifest, summary_lines
from mdistill.corpus.readers import plan_units, read_units_batch
from mdistill.log import get_logger

log = get_logger("corpus")

CORPUS_FORMAT = 4  # bump when extraction or cleaning code changes what a corpus holds
CLEAN_SETTINGS = {
    "langs",
    "min_words",
    "max_words",
    "min_chars",
    "max_chars",
    "max_length_ratio",
    "dev_fraction",
    "test_fraction",
    "train_fraction",
    "heldout_sources",
}


def _unit(fmt: str, path: str, source: str, origin: str, nbytes: int, **args) -> dict:
    return {"format": fmt, "path": path, "source": source, "origin": origin, "bytes": nbytes, "args": args}


def debian_units(src: SourceConfig, langs: list[str], cache_dir: Path) -> tuple[list[dict], str]:
    """Read units of the built-in corpus and what they came from (package versions)."""
    from mdistill.corpus.debian import (
        GETTEXT_PACKAGES,
        copyright_licences,
        ddtp_lists,
        ddtp_marker,
        download_packages,
        gettext_catalogs,
        package_records,
    )

    units: list[dict] = []
    identity: list[str] = []
    if "libreoffice" in src.parts:
        help_root = debian_help_root(langs, cache_dir)
        identity.append(source_identity(help_root))
        cp = help_root.parents[3] / "usr" / "share" / "doc" / "libreoffice-help-en-us" / "copyright"
        licence = ", ".join(copyright_licences(cp.read_text(errors="replace"))) if cp.is_file() else None
        for rel in list_help_files(help_root, src.max_files):
            size = (help_root / "en-US" / rel).stat().st_size
            unit = _unit("libreoffice", rel, "libreoffice", f"libreoffice-help/{rel}", size, help_root=str(help_root), langs=langs)
            units.append(unit | {"licence": licence})
    if "gettext" in src.parts:
        root = cache_dir / "debian" / "gettext"
        pkgs = download_packages(src.packages or GETTEXT_PACKAGES, root)
        records = package_records(root, pkgs)
        identity.append("\n".join(sorted(r["deb"] for r in records.values())))  # the versions read, not all the folder holds
        licence = {c: ", ".join(r["licences"]) for r in records.values() for c in r["catalogs"]}
        for lang, label, path in gettext_catalogs(root, langs, pkgs):
            rel = str(path.relative_to(root))
            units.append(_unit("mo", str(path), f"gettext:{label}", rel, path.stat().st_size, lang=lang) | {"licence": licence.get(rel)})
    if "ddtp" in src.parts:
        lists = ddtp_lists(langs, cache_dir / "debian" / "ddtp")
        versions = ddtp_marker(cache_dir / "debian" / "ddtp").get("versions", {})  # content digests, if recorded
        if lists is None:
            log.warning("DDTP package descriptions skipped (see the message above); the rest of the corpus is built")
        else:
            en = [str(p) for p in _as_list(lists["en"])]
            for lang in langs:
                if lang not in lists:
                    log.warning("DDTP has no descriptions for %s", lang)
                    continue
                xx = [str(p) for p in _as_list(lists[lang])]
                ident: list = [(p, Path(p).stat().st_size) for p in en + xx]
                if versions:  # an edit that keeps the size is a new corpus too (older caches: sizes alone)
                    ident.append({code: versions.get(code) for code in ("en", lang)})
                identity.append(json.dumps(ident))
                size = sum(Path(p).stat().st_size for p in xx)
                unit = _unit("ddtp", "|".join(xx), "ddtp", f"ddtp/Translation-{lang}", size, en_paths=en, lang=lang)
                units.append(unit | {"licence": DDTP_TERMS})
    return units, "\n".join(identity)


# Package descriptions are part of each package (Debian main: DFSG-free); DDTP publishes the
# translations in the archive's i18n indexes.
DDTP_TERMS = "Debian package descriptions and their DDTP translations (Debian main archive; https://ddtp.debian.org)"


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _file_identity(units: list[dict]) -> str:
    files = sorted({u["path"] for u in units if Path(u["path"]).exists()})
    return json.dumps([(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files])


def plan(cfg: CorpusConfig, cache_dir: Path) -> tuple[list[dict], str]:
    """All read units of all sources, and an identity of the inputs (for the fingerprint)."""
    units: list[dict] = []
    identity: list[str] = []
    for src in cfg.sources:
        if src.format == "debian":
            u, ident = debian_units(src, cfg.langs, cache_dir)
        else:
            u = plan_units(src)
            ident = _file_identity(u)
        units += u
        identity.append(ident)
    if not units:
        raise RuntimeError("the corpus sources hold no input files")
    return units, "\n".join(identity)


def corpus_fingerprint(cfg: CorpusConfig, identity: str) -> str:
    """The corpus is a pure function of its inputs and the reading/cleaning/split settings."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"config": cfg.model_dump(), "inputs": identity, "version": CORPUS_FORMAT}, sort_keys=True).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Corpus:
    """A built corpus: ``dir/{pairs,quarantine,english}/*.parquet`` and ``dir/manifest.json``."""

    dir: Path
    manifest: dict  # rows in / kept / rejected per language, source and file (``corpus.manifest``)
    reused: bool  # built by an earlier run with the same fingerprint
    fingerprint: str

    @property
    def pairs(self) -> Path:
        return self.dir / "pairs"

    @property
    def english(self) -> Path:
        return self.dir / "english"


def build_corpus(cfg: CorpusConfig, cache_dir: Path, out_dir: Path | None = None) -> Corpus:
    """``<out>/{pairs,quarantine,english}/*.parquet`` + ``manifest.json``; ``out`` defaults to
    ``<cache>/corpora/<fingerprint>``. Built once per fingerprint."""
    units, identity = plan(cfg, cache_dir)
    fingerprint = corpus_fingerprint(cfg, identity)
    out_dir = out_dir or cache_dir / "corpora" / fingerprint
    manifest_file = out_dir / "manifest.json"
    if manifest_file.exists():
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("fingerprint") == fingerprint:
            return Corpus(out_dir, manifest, True, fingerprint)
        raise FileExistsError(
            f"{out_dir} holds another corpus (fingerprint {manifest.get('fingerprint')}); choose another --out or remove it"
        )

    # Rows of one English sentence share a bucket; a bucket holds about bucket_bytes of input,
    # which bounds the memory of the task that deduplicates it, whatever the corpus size.
    buckets = max(1, math.ceil(sum(u["bytes"] for u in units) / cfg.bucket_bytes))
    tmp = out_dir.with_name(f"{out_dir.name}.{uuid.uuid4().hex}.tmp")  # private: concurrent builds never share it
    staged = tmp / "staged"

    ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=min(len(units), 64))
    ds = ds.map_batches(read_units_batch, batch_size=1)
    ds = ds.map_batches(
        clean_table,
        batch_format="pyarrow",
        fn_kwargs={**cfg.model_dump(include=CLEAN_SETTINGS), "buckets": buckets},
    )
    ds.write_parquet(str(staged), partition_cols=["bucket"])
    staged_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in staged.rglob("*.parquet"))

    parts = sorted(staged.glob("bucket=*"))
    finished = ray.data.from_items(
        [{"staged": str(p), "bucket": int(p.name.split("=")[1])} for p in parts], override_num_blocks=max(1, len(parts))
    )
    finished = finished.map_batches(_finish_batch, batch_size=1, fn_kwargs={"out": str(tmp), "dedup": cfg.dedup}, batch_format="pyarrow")
    counts = finished.take_all()
    shutil.rmtree(staged)
    for sub in ("pairs", "quarantine", "english"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)

    english = (
        pq.read_table(tmp / "english", columns=["split"]).column("split").value_counts().to_pylist()
        if any((tmp / "english").iterdir())
        else []
    )
    manifest = build_manifest(counts, staged_rows=staged_rows, english={r["values"]: r["counts"] for r in english})
    written = sum(pq.ParquetFile(f).metadata.num_rows for sub in ("pairs", "quarantine") for f in (tmp / sub).glob("*.parquet"))
    if written != staged_rows:
        raise AssertionError(f"corpus: {staged_rows} rows read but {written} written")
    licences = {u["source"]: u["licence"] for u in units if u.get("licence")}  # what each source may be used under
    manifest = {
        "fingerprint": fingerprint,
        "buckets": buckets,
        "units": len(units),
        **manifest,
        **({"licences": licences} if licences else {}),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    for line in summary_lines(manifest):
        log.info(line)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out_dir)  # complete or absent: a killed build is never reused
    except OSError:  # another build of the same fingerprint finished first; it holds the same rows
        shutil.rmtree(tmp, ignore_errors=True)
    return Corpus(out_dir, manifest, False, fingerprint)


def _finish_batch(batch, out: str, dedup: bool):
    import pyarrow as pa

    tables = [
        finish_bucket(Path(s), Path(out), b, dedup) for s, b in zip(batch.column("staged").to_pylist(), batch.column("bucket").to_pylist())
    ]
    return pa.concat_tables(tables)
