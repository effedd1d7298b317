"""The row every reader produces, and the reasons a row can be rejected for.

Readers (``mdistill.corpus.readers``) yield ``Row`` tuples; ``RowBatcher`` turns them into Arrow
tables of ``RAW_SCHEMA`` with the constant columns of the file (``source``, ``origin``). A row
rejected while reading (bad bytes, bad JSON, wrong column count, fuzzy PO entry, ...) carries its
reason and its raw content; the cleaning stage only decides rows that arrive without one. So every
input row leaves the corpus stage exactly once, kept or quarantined, and rows in = kept + rejected.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import NamedTuple

import pyarrow as pa

RAW_CHARS = 2000  # raw content kept with a read-time rejection, for diagnosis


class Row(NamedTuple):
    en: str | None
    text: str | None
    lang: str | None
    position: int  # 1-based line (text formats), entry (PO/MO, TMX unit, Parquet row), paragraph (help)
    reason: str | None = None
    raw: str | None = None


RAW_SCHEMA = pa.schema(
    [
        ("en", pa.string()),
        ("text", pa.string()),
        ("lang", pa.string()),
        ("position", pa.int64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("source", pa.string()),  # label: libreoffice, gettext:git, ddtp, or the user source's name
        ("origin", pa.string()),  # the file (or dataset) the row was read from
    ]
)

# Reasons, in the order the filters apply (the first that fails is recorded).
READ_REASONS = {
    "empty_line": "blank line in a line-based file",
    "invalid_utf8": "bytes that are not valid UTF-8 (or the file's declared charset)",
    "wrong_column_count": "a delimited line with more or fewer fields than the file's header/first line",
    "invalid_json": "a JSONL line that does not parse (a syntax error, or nested too deep to parse)",
    "wrong_type": "a field that is not a string (number, list, object, ...)",
    "missing_field": "a required field (en/text/lang) is absent or null",
    "unterminated_quote": "a CSV record whose quote never closes before end of file (each line it swallowed)",
    "bad_quoting": "a CSV record with a stray quote inside a field",
    "unknown_language": "a language code that cannot be normalised",
    "no_english": "a TMX unit without a segment in the source language",
    "fuzzy": "a gettext entry marked fuzzy (unreviewed translation)",
    "obsolete": "a gettext entry marked obsolete (#~)",
    "untranslated": "a gettext entry without translation",
}
CLEAN_REASONS = {
    "lang_not_selected": "language not in corpus.langs",
    "empty": "a side is empty after normalisation",
    "too_many_chars": "a side is longer than max_chars characters",
    "too_few_chars": "a side is shorter than min_chars characters",
    "format_only": "a side is only format specifiers / placeholders / punctuation",
    "too_short": "fewer than min_words English words",
    "too_long": "more than max_words English words",
    "identical": "source and translation are the same string",
    "length_ratio": "UTF-8 length ratio of the sides above max_length_ratio",
    "duplicate": "the same (en, lang, text) pair seen earlier",
}


def truncate(s: str | None, n: int = RAW_CHARS) -> str | None:
    return s if s is None or len(s) <= n else s[:n] + f"…[{len(s) - n} more chars]"


class RowBatcher:
    """Rows -> Arrow tables of ``RAW_SCHEMA``, ``rows_per_table`` at a time (bounded memory)."""

    def __init__(self, source: str, origin: str, rows_per_table: int = 20_000) -> None:
        self.source, self.origin, self.n = source, origin, rows_per_table

    def table(self, rows: list[Row]) -> pa.Table:
        cols = list(zip(*rows)) if rows else [[] for _ in Row._fields]
        arrays = [pa.array(c, RAW_SCHEMA.field(name).type) for name, c in zip(Row._fields, cols)]
        n = len(rows)
        arrays += [pa.array([self.source] * n, pa.string()), pa.array([self.origin] * n, pa.string())]
        return pa.Table.from_arrays(arrays, schema=RAW_SCHEMA)

    def tables(self, rows: Iterable[Row]) -> Iterator[pa.Table]:
        it = iter(rows)
        while True:
            # Rows are acyclic tuples: the cyclic GC only re-scans them (a third of the read time)
            was = gc.isenabled()
            gc.disable()
            try:
                buf = list(islice(it, self.n))
                table = self.table(buf) if buf else None
            finally:
                if was:
                    gc.enable()
            if table is None:
                return
            yield table


class CorpusReadError(RuntimeError):
    """An input file that cannot be read as its format; the message names the file and position."""
