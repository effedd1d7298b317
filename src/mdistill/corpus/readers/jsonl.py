"""JSON Lines parallel corpora: one object per line, e.g. ``{"en": "...", "text": "...", "lang": "de"}``.

Fields are picked by key; a dotted key reaches into nested objects (``translation.de`` for the
Hugging Face translation layout). Read in byte ranges like TSV. A line that is not JSON (nested
too deep to parse included), not an object, lacks a field, or holds a non-string where a string
belongs is quarantined with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from mdistill.corpus.langs import try_normalize_lang
from mdistill.corpus.readers.lines import check_encoding, decode, iter_lines
from mdistill.corpus.schema import Row, truncate


def get_path(obj, dotted: str):
    """``get_path({"t": {"de": "x"}}, "t.de") == "x"``; ``KeyError`` when absent."""
    for k in dotted.split("."):
        if not isinstance(obj, dict) or k not in obj:
            raise KeyError(dotted)
        obj = obj[k]
    return obj


def record_row(obj, fields: dict[str, str], lang: str | None, position: int, raw: str) -> Row:
    """One parsed record (a dict) -> a Row, or a quarantined Row saying what is wrong with it."""
    if not isinstance(obj, dict):
        return Row(None, None, lang, position, "wrong_type", truncate(raw))
    values = {}
    for k, key in fields.items():
        try:
            v = get_path(obj, key)
        except KeyError:
            return Row(None, None, lang, position, "missing_field", truncate(raw))
        if v is None:
            return Row(None, None, lang, position, "missing_field", truncate(raw))
        if not isinstance(v, str):
            return Row(None, None, lang, position, "wrong_type", truncate(raw))
        values[k] = v
    code = values.get("lang", lang)
    norm = try_normalize_lang(code) if code is not None else None
    if norm is None:
        return Row(values["en"], values["text"], code, position, "unknown_language" if code else "missing_field", truncate(raw))
    return Row(values["en"], values["text"], norm, position)


def read_jsonl(
    path: str,
    *,
    fields: dict[str, str],
    lang: str | None,
    encoding: str = "utf-8",
    start: int = 0,
    end: int | None = None,
    first_line: int = 1,
) -> Iterator[Row]:
    check_encoding(path, encoding, line_based=True)
    for n, line in iter_lines(path, start, end, first_line):
        text, ok = decode(line, encoding)
        if not ok:
            yield Row(None, None, lang, n, "invalid_utf8", truncate(text))
            continue
        if not text.strip():
            yield Row(None, None, lang, n, "empty_line")
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack, one bad line
            yield Row(None, None, lang, n, "invalid_json", truncate(text))
            continue
        yield record_row(obj, fields, lang, n, text)
