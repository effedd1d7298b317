"""TSV and CSV parallel corpora.

TSV (Moses/OPUS style): one pair per line, fields split on the delimiter, quotes are ordinary
text; read in byte ranges, so a big file is read by several tasks. CSV: RFC 4180 quoting through
the ``csv`` module (fields may span lines), read by one task per file.

Columns are picked by name (with a header) or 0-based index (without); ``lang`` is a column or
one fixed language for the file. A line whose field count differs from the header's (or the
first line's) is quarantined as ``wrong_column_count``, never guessed at. A column index outside
that count (or negative: Python would count from the end) is an error naming the file and the key.
A UTF-8 byte order mark before the header (or the first line) is dropped.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

from mdistill.corpus.langs import try_normalize_lang
from mdistill.corpus.readers.lines import check_encoding, decode, iter_lines, text_encoding
from mdistill.corpus.schema import Row, truncate

_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes under errors="surrogateescape"


def _pair(fields: list[str], cols: dict[str, int], lang: str | None, position: int, raw: str) -> Row:
    if "lang" not in cols and lang is not None:  # one language for the file, normalised by the config
        return Row(fields[cols["en"]], fields[cols["text"]], lang, position)
    code = fields[cols["lang"]] if "lang" in cols else lang
    norm = try_normalize_lang(code) if code is not None else None
    if norm is None:
        return Row(fields[cols["en"]], fields[cols["text"]], code, position, "unknown_language" if code else "missing_field", truncate(raw))
    return Row(fields[cols["en"]], fields[cols["text"]], norm, position)


def read_tsv(
    path: str,
    *,
    cols: dict[str, int],
    ncols: int,
    lang: str | None,
    delimiter: str = "\t",
    encoding: str = "utf-8",
    skip_header: bool,
    start: int = 0,
    end: int | None = None,
    first_line: int = 1,
) -> Iterator[Row]:
    """Rows of one byte range of a TSV file (``skip_header``: the range holds the header line)."""
    check_encoding(path, encoding, line_based=True)
    check_columns(path, cols, ncols)
    for n, line in iter_lines(path, start, end, first_line):
        if skip_header and n == 1:
            continue
        text, ok = decode(line, encoding)
        if not ok:
            yield Row(None, None, lang, n, "invalid_utf8", truncate(text))
        elif not text.strip():
            yield Row(None, None, lang, n, "empty_line")
        else:
            fields = text.split(delimiter)
            if len(fields) != ncols:
                yield Row(None, None, lang, n, "wrong_column_count", truncate(text))
            else:
                yield _pair(fields, cols, lang, n, text)


class _Lines:
    """Text lines of a file, remembering those of the record being parsed (for quarantine)."""

    def __init__(self, f: io.TextIOBase) -> None:
        self.f, self.pending, self.line = f, [], 0

    def __iter__(self):
        for line in self.f:
            self.line += 1
            self.pending.append(line)
            yield line

    def take(self) -> tuple[int, list[str]]:
        first, lines = self.line - len(self.pending) + 1, self.pending
        self.pending = []
        return first, lines


def read_csv(
    path: str, *, cols: dict[str, int], ncols: int, lang: str | None, delimiter: str = ",", encoding: str = "utf-8", header: bool
) -> Iterator[Row]:
    """Rows of a quoted CSV file; ``position`` is the line the record starts on."""
    check_encoding(path, encoding, line_based=False)
    check_columns(path, cols, ncols)
    with open(path, encoding=text_encoding(encoding), errors="surrogateescape", newline="") as f:
        lines = _Lines(f)
        reader = csv.reader(iter(lines), delimiter=delimiter, strict=True)
        seen_header = not header
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                first, raw = lines.take()
                if "unexpected end of data" in str(e):  # the quote never closed: every line it swallowed
                    for i, line in enumerate(raw):
                        yield Row(None, None, lang, first + i, "unterminated_quote", truncate(line.rstrip("\r\n")))
                    return
                yield Row(None, None, lang, first, "bad_quoting", truncate("".join(raw).rstrip("\r\n")))
                continue
            first, raw = lines.take()
            if not seen_header:
                seen_header = True
                continue
            raw_text = "".join(raw).rstrip("\r\n")
            if not fields or not any(x.strip() for x in fields):
                yield Row(None, None, lang, first, "empty_line")
            elif _SURROGATE.search(raw_text):
                yield Row(
                    None,
                    None,
                    lang,
                    first,
                    "invalid_utf8",
                    truncate(raw_text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")),
                )
            elif len(fields) != ncols:
                yield Row(None, None, lang, first, "wrong_column_count", truncate(raw_text))
            else:
                yield _pair(fields, cols, lang, first, raw_text)


def resolve_columns(columns: dict[str, str | int], header: list[str] | None) -> dict[str, int]:
    """Column names (needs a header) or indices -> indices; defaults en=0/"en", text=1/"text"."""
    if header is None:
        want = {"en": 0, "text": 1, **columns}
        bad = {k: v for k, v in want.items() if not isinstance(v, int)}
        if bad:
            raise ValueError(f"columns {bad} are names, but the file has no header: use 0-based indices or header: true")
        return want  # type: ignore[return-value]
    want = {"en": "en", "text": "text", **({"lang": "lang"} if "lang" in header else {}), **columns}
    out = {}
    for k, v in want.items():
        if isinstance(v, int):
            out[k] = v
        elif v in header:
            out[k] = header.index(v)
        else:
            raise ValueError(f"column {v!r} ({k}) not in the header {header}")
    return out


def check_columns(path: str, cols: dict[str, int], ncols: int) -> None:
    """Every picked column exists in a line of ``ncols`` fields (the others are quarantined as
    ``wrong_column_count``), so no valid line can raise IndexError or silently pick the wrong field."""
    for key, i in cols.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"{path}: columns.{key} = {i!r}: a column is a 0-based index >= 0 (or a header name)")
        if i >= ncols:
            raise ValueError(
                f"{path}: columns.{key} = {i}: past the last column (the file's first record has {ncols} column(s), indices 0..{ncols - 1})"
            )
