"""Readers: one per input format, each a plain generator of ``Row`` (no Ray).

``plan_units`` turns a source config into read units (a file, a byte range of a big line-based
file, a LibreOffice help file, a DDTP language); ``read_unit`` reads one into Arrow tables of
``RAW_SCHEMA``. The corpus recipe hands the units to Ray Data, a task per unit.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from mdistill.config import SourceConfig
from mdistill.corpus.readers.delimited import check_columns, read_csv, read_tsv, resolve_columns
from mdistill.corpus.readers.gettext import read_gettext
from mdistill.corpus.readers.hf import read_hf
from mdistill.corpus.readers.jsonl import read_jsonl
from mdistill.corpus.readers.lines import (
    COMPRESSED_SUFFIXES,
    check_encoding,
    check_not_compressed,
    decode,
    iter_lines,
    line_ranges,
    text_encoding,
)
from mdistill.corpus.readers.parquet import read_parquet
from mdistill.corpus.readers.tmx import read_tmx
from mdistill.corpus.schema import CorpusReadError, RowBatcher
from mdistill.log import get_logger

log = get_logger("corpus")

EXTENSIONS = {
    "tsv": (".tsv", ".txt"),
    "csv": (".csv",),
    "jsonl": (".jsonl", ".json"),
    "parquet": (".parquet",),
    "tmx": (".tmx",),
    "po": (".po",),
    "mo": (".mo",),
}


def expand_paths(src: SourceConfig) -> list[str]:
    """Files of a source: a file, every file of the format under a folder, or a glob; sorted."""
    if src.format == "hf":
        return list(src.paths)
    out: list[str] = []
    for p in src.paths:
        path = Path(p).expanduser()
        if path.is_dir():
            out += sorted(str(f) for f in path.rglob("*") if f.is_file() and f.name.endswith(EXTENSIONS[src.format]))
            packed = sorted(
                str(f)
                for f in path.rglob("*")
                if f.is_file() and f.name.endswith(tuple(e + c for e in EXTENSIONS[src.format] for c in COMPRESSED_SUFFIXES))
            )
            if packed:  # not read: say so, so their rows are not missed without a word
                log.warning(
                    "corpus source %s: %d compressed file(s) in %s not read (decompress them to include them): %s",
                    src.name or src.format,
                    len(packed),
                    path,
                    ", ".join(packed[:5]),
                )
        elif path.is_file():
            out.append(str(path))
        elif matches := sorted(glob.glob(str(path), recursive=True)):
            out += matches
        else:
            raise FileNotFoundError(f"corpus source {src.name or src.format}: {p} does not exist")
    return [str(Path(f).resolve()) for f in dict.fromkeys(out)]


def _first_record(path: str, src: SourceConfig) -> list[str] | None:
    delim = src.delimiter or ("," if src.format == "csv" else "\t")
    if src.format == "csv":
        with open(path, encoding=text_encoding(src.encoding), errors="replace", newline="") as f:
            for rec in csv.reader(f, delimiter=delim):
                if any(x.strip() for x in rec):
                    return rec
        return None
    for _, line in iter_lines(path):
        text, _ = decode(line, src.encoding)
        if text.strip():
            return text.split(delim)
    return None


def _fields(src: SourceConfig) -> dict[str, str]:
    """Keys for JSON-like formats: en, text, and lang when named or when no fixed language."""
    f = {"en": "en", "text": "text", **{k: str(v) for k, v in src.columns.items()}}
    if "lang" not in f and src.lang is None:
        f["lang"] = "lang"
    return f


def plan_units(src: SourceConfig, range_bytes: int = 32 << 20) -> list[dict]:
    """Read units of a user source (``format: debian`` is planned by the corpus recipe): each is
    ``{format, path, source, origin, bytes, args}``, read by ``READERS[format](path, **args)``."""
    name = src.name or src.format
    units: list[dict] = []

    def unit(path: str, nbytes: int, **args) -> dict:
        return {"format": src.format, "path": path, "source": name, "origin": path, "bytes": nbytes, "args": args}

    for path in expand_paths(src):
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        common = {"lang": src.lang}
        if src.format != "hf" and Path(path).is_file():  # hf: load_dataset reads compressed data files itself
            check_not_compressed(path, src.format)
        if src.format in ("tsv", "csv", "jsonl"):
            check_encoding(path, src.encoding, line_based=src.format != "csv")
        if src.format in ("tsv", "csv"):
            header = src.header if src.header is not None else src.format == "csv"
            first = _first_record(path, src)
            if first is None:  # an empty file: nothing to read, nothing to count
                continue
            try:
                cols = resolve_columns(dict(src.columns), [c.strip() for c in first] if header else None)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
            check_columns(path, cols, len(first))
            if "lang" not in cols and src.lang is None:
                raise ValueError(f"{path}: no lang column and no lang: for this source")
            delim = src.delimiter or ("," if src.format == "csv" else "\t")
            common |= {"cols": cols, "ncols": len(first), "delimiter": delim, "encoding": src.encoding}
            if src.format == "csv":
                units.append(unit(path, size, header=header, **common))
            else:
                ranges = line_ranges(path, range_bytes)
                units += [unit(path, e - s, skip_header=header and s == 0, start=s, end=e, first_line=n, **common) for s, e, n in ranges]
        elif src.format == "jsonl":
            common |= {"fields": _fields(src), "encoding": src.encoding}
            units += [unit(path, e - s, start=s, end=e, first_line=n, **common) for s, e, n in line_ranges(path, range_bytes)]
        elif src.format == "parquet":
            units.append(unit(path, size, fields=_fields(src), **common))
        elif src.format == "hf":
            units.append(unit(path, size, fields=_fields(src), split=src.split, **common))
        elif src.format == "tmx":
            units.append(unit(path, size, en_lang=src.en_lang))
        else:  # po / mo
            units.append(unit(path, size, **common))
    return units


def _libreoffice(path: str, help_root: str, langs: list[str]):
    from mdistill.corpus.libreoffice import file_pairs

    return file_pairs(Path(help_root), path, langs)


def _ddtp(path: str, en_paths: list[str], lang: str):
    from mdistill.corpus.ddtp import iter_ddtp_pairs

    return iter_ddtp_pairs([Path(p) for p in en_paths], [Path(p) for p in path.split("|")], lang)


READERS = {
    "tsv": read_tsv,
    "csv": read_csv,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "hf": read_hf,
    "tmx": read_tmx,
    "po": read_gettext,
    "mo": read_gettext,
    "libreoffice": _libreoffice,  # built-in corpus units (planned by the corpus recipe)
    "ddtp": _ddtp,
}


def read_rows(u: dict):
    """The ``Row`` generator of one unit."""
    if u["format"] not in READERS:
        raise ValueError(f"unknown unit format {u['format']!r}")
    return READERS[u["format"]](u["path"], **u["args"])


def read_unit(u: dict, rows_per_table: int = 20_000) -> Iterator[pa.Table]:
    try:
        yield from RowBatcher(u["source"], u["origin"], rows_per_table).tables(read_rows(u))
    except CorpusReadError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, LookupError, RecursionError) as e:  # name the file whatever the reader hit
        raise CorpusReadError(f"{u['origin']}: {type(e).__name__}: {e}") from e


def read_units_batch(batch: dict) -> Iterator[pa.Table]:
    """Ray Data ``map_batches`` function over a column ``unit`` of JSON-encoded units (a generator:
    a big file streams out table by table instead of being held whole)."""
    for u in batch["unit"]:
        yield from read_unit(json.loads(u))
