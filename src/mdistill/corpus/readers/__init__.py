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
from mdistill.corpus.readers.delimited import read_csv, read_tsv, resolve_columns
from mdistill.corpus.readers.gettext import read_gettext
from mdistill.corpus.readers.hf import read_hf
from mdistill.corpus.readers.jsonl import read_jsonl
from mdistill.corpus.readers.lines import decode, iter_lines, line_ranges
from mdistill.corpus.readers.parquet import read_parquet
from mdistill.corpus.readers.tmx import read_tmx
from mdistill.corpus.schema import CorpusReadError, RowBatcher

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
        with open(path, encoding=src.encoding, errors="replace", newline="") as f:
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
    """Read units of a user source (``format: debian`` is planned by the corpus recipe)."""
    name = src.name or src.format
    units: list[dict] = []
    for path in expand_paths(src):
        base = {"format": src.format, "path": path, "source": name, "origin": path, "lang": src.lang, "encoding": src.encoding}
        if src.format in ("tsv", "csv"):
            header = src.header if src.header is not None else src.format == "csv"
            first = _first_record(path, src)
            if first is None:  # an empty file: nothing to read, nothing to count
                continue
            cols = resolve_columns(dict(src.columns), [c.strip() for c in first] if header else None)
            if "lang" not in cols and src.lang is None:
                raise ValueError(f"{path}: no lang column and no lang: for this source")
            opts = {"cols": cols, "ncols": len(first), "delimiter": src.delimiter or ("," if src.format == "csv" else "\t")}
            if src.format == "csv":
                units.append({**base, **opts, "header": header})
            else:
                units += [
                    {**base, **opts, "skip_header": header and s == 0, "start": s, "end": e, "first_line": n}
                    for s, e, n in line_ranges(path, range_bytes)
                ]
        elif src.format == "jsonl":
            units += [{**base, "fields": _fields(src), "start": s, "end": e, "first_line": n} for s, e, n in line_ranges(path, range_bytes)]
        elif src.format in ("parquet", "hf"):
            units.append({**base, "fields": _fields(src), "split": src.split})
        elif src.format == "tmx":
            units.append({**base, "en_lang": src.en_lang})
        else:  # po / mo
            units.append(base)
    return units


def read_rows(u: dict):
    """The ``Row`` generator of one unit."""
    fmt = u["format"]
    if fmt == "tsv":
        return read_tsv(
            u["path"],
            cols=u["cols"],
            ncols=u["ncols"],
            lang=u["lang"],
            delimiter=u["delimiter"],
            encoding=u["encoding"],
            skip_header=u["skip_header"],
            start=u["start"],
            end=u["end"],
            first_line=u["first_line"],
        )
    if fmt == "csv":
        return read_csv(
            u["path"],
            cols=u["cols"],
            ncols=u["ncols"],
            lang=u["lang"],
            delimiter=u["delimiter"],
            encoding=u["encoding"],
            header=u["header"],
        )
    if fmt == "jsonl":
        return read_jsonl(
            u["path"],
            fields=u["fields"],
            lang=u["lang"],
            encoding=u["encoding"],
            start=u["start"],
            end=u["end"],
            first_line=u["first_line"],
        )
    if fmt == "parquet":
        return read_parquet(u["path"], fields=u["fields"], lang=u["lang"])
    if fmt == "hf":
        return read_hf(u["path"], fields=u["fields"], lang=u["lang"], split=u["split"])
    if fmt == "tmx":
        return read_tmx(u["path"], en_lang=u["en_lang"])
    if fmt in ("po", "mo"):
        return read_gettext(u["path"], lang=u["lang"])
    if fmt == "libreoffice":
        from mdistill.corpus.libreoffice import file_pairs

        return file_pairs(Path(u["help_root"]), u["path"], u["langs"])
    if fmt == "ddtp":
        from mdistill.corpus.ddtp import iter_ddtp_pairs

        return iter_ddtp_pairs([Path(p) for p in u["en_paths"]], [Path(p) for p in u["path"].split("|")], u["lang"])
    raise ValueError(f"unknown unit format {fmt!r}")


def read_unit(u: dict, rows_per_table: int = 20_000) -> Iterator[pa.Table]:
    try:
        yield from RowBatcher(u["source"], u["origin"], rows_per_table).tables(read_rows(u))
    except CorpusReadError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:  # name the file whatever the reader hit
        raise CorpusReadError(f"{u['origin']}: {type(e).__name__}: {e}") from e


def read_units_batch(batch: dict) -> Iterator[pa.Table]:
    """Ray Data ``map_batches`` function over a column ``unit`` of JSON-encoded units (a generator:
    a big file streams out table by table instead of being held whole)."""
    for u in batch["unit"]:
        yield from read_unit(json.loads(u))
