"""DDTP: Debian package descriptions paired with their translations.

``Translation-en`` and ``Translation-xx`` (apt index files, see ``mdistill.corpus.debian``) are
deb822 stanzas::

    Package: 0ad-data
    Description-md5: 26581e685027d5ae84824362a4ba59ee
    Description-de: Echtzeit-Strategiespiel (Datendateien)
     0 A.D. ist ein freies, quelloffenes, ...
     .
     Dieses Paket enthält die wichtigsten ...

The first line of ``Description-<code>`` is the short description; continuation lines start with
a space and a line `` .`` separates paragraphs of the long description. A translated stanza
translates the English one with the same ``Description-md5``; sentence boundaries are not
aligned, paragraphs are (translators keep them), so the unit of a pair is the short description
or one paragraph.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from mdistill.corpus.readers.lines import decode
from mdistill.corpus.schema import Row, truncate

_MD5 = re.compile(rb"^Description-md5:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)


class Description(NamedTuple):
    md5: str | None
    short: str | None  # None: the stanza has no Description-<code> field
    paragraphs: list[str]


def iter_stanzas(path: Path) -> Iterator[bytes]:
    """The stanzas of a deb822 file as bytes (decoded by the caller, so one bad stanza is one bad row)."""
    buf: list[bytes] = []
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                buf.append(line)
            elif buf:
                yield b"".join(buf)
                buf = []
    if buf:
        yield b"".join(buf)


def _paragraphs(lines: list[str]) -> list[str]:
    """Long-description lines -> paragraphs, each joined with single spaces; empty ones dropped.

    Verbatim lines (two leading spaces: lists, code) are joined like the others; cleaning
    normalises later.
    """
    paras: list[list[str]] = [[]]
    for line in lines:
        if line.rstrip() == ".":
            paras.append([])
        elif line.strip():
            paras[-1].append(line.strip())
    return [" ".join(p) for p in paras if p]


def parse_description(text: str) -> Description:
    """The md5, short description and long-description paragraphs of one stanza (any language)."""
    md5 = short = None
    body: list[str] = []
    in_desc = False
    for line in text.split("\n"):  # not splitlines(): descriptions may hold \x0c, \u2028, ...
        if line[:1] in (" ", "\t"):
            if in_desc:
                body.append(line[1:])
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        in_desc = key.startswith("description-") and key != "description-md5"
        if key == "description-md5":
            md5 = value.strip()
        elif in_desc:
            short = value.strip()
    return Description(md5, short, _paragraphs(body))


def _paths(p: Path | list[Path]) -> list[Path]:
    return [p] if isinstance(p, Path) else list(p)


def english_descriptions(paths: list[Path]) -> dict[str, Description | str]:
    """md5 -> English description (first seen wins), or the lossy stanza text when not valid UTF-8.

    Held in memory (~64k stanzas, ~30 MB of text); the translated side is streamed.
    """
    english: dict[str, Description | str] = {}
    for path in paths:
        for stanza in iter_stanzas(path):
            text, ok = decode(stanza)
            if not ok:
                m = _MD5.search(stanza)
                if m:
                    english.setdefault(m.group(1).decode("ascii", "replace"), text)
                continue
            d = parse_description(text)
            if d.md5 and d.short is not None:
                english.setdefault(d.md5, d)
    return english


def _stanza_rows(stanza: bytes, english: dict[str, Description | str], lang: str, pos: int) -> Iterator[Row]:
    """The rows of one translated stanza (see ``iter_ddtp_pairs``)."""
    text, ok = decode(stanza)
    if not ok:
        yield Row(None, None, lang, pos, "invalid_utf8", truncate(text))
        return
    xx = parse_description(text)
    if not xx.md5 or xx.short is None:
        yield Row(None, xx.short, lang, pos, "missing_field", truncate(text))
        return
    en = english.get(xx.md5)
    if en is None:
        yield Row(None, xx.short, lang, pos, "no_english", truncate(text))
        return
    if isinstance(en, str):  # the English stanza is not valid UTF-8
        yield Row(None, None, lang, pos, "invalid_utf8", truncate(en))
        return
    yield Row(en.short, xx.short, lang, pos)
    if len(en.paragraphs) == len(xx.paragraphs):
        for e, t in zip(en.paragraphs, xx.paragraphs):
            yield Row(e, t, lang, pos)
    else:
        for t in xx.paragraphs:
            yield Row(None, t, lang, pos, "missing_field", truncate(t))


def iter_ddtp_pairs(en_path: Path | list[Path], xx_path: Path | list[Path], lang: str) -> Iterator[Row]:
    """Rows pairing ``Translation-en`` with ``Translation-<lang>`` by ``Description-md5``.

    Per translated stanza (``position`` = its 1-based index; over several files, counted as if
    they were concatenated):

    - the short-description pair, always, then one pair per long-description paragraph when both
      sides have the same number of paragraphs;
    - when the counts differ, paragraphs cannot be aligned: one row per translated paragraph with
      reason ``missing_field`` (no English) and the paragraph as ``raw``, so every translated
      paragraph is accounted for;
    - no English stanza with that md5: one ``no_english`` row (the stanza as ``raw``);
    - bytes that are not UTF-8 (translated stanza, or the English one it pairs with): one
      ``invalid_utf8`` row; a stanza without md5 or description: one ``missing_field`` row.
    """
    english = english_descriptions(_paths(en_path))
    pos = 0
    for path in _paths(xx_path):
        for stanza in iter_stanzas(path):
            pos += 1
            yield from _stanza_rows(stanza, english, lang, pos)
