"""gettext catalogs: PO (source) and MO (compiled) files, through ``polib``.

``msgid`` is the English source, ``msgstr`` the translation; each catalog's charset is honoured
(Debian still ships some latin-1 catalogs), except a PO whose header declares another charset but
whose bytes are UTF-8 (non-ASCII, and strict UTF-8 decodes them): read as UTF-8, with a warning,
since decoding UTF-8 as latin-1 would keep every accented letter as mojibake ("LÃ¶schen").
Plural entries give two pairs: ``msgid`` with form 0 and ``msgid_plural`` with form 1 (when the
language has one). Fuzzy, obsolete and untranslated entries are not pairs, but they are rows:
quarantined with that reason, so the counts add up. The header entry (``msgid ""``) is metadata, not a row. The language is the config's, else the
PO ``Language:`` header, else the locale folder (``…/de/LC_MESSAGES/x.mo``) or file name (``de.po``).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from mdistill.corpus.langs import try_normalize_lang
from mdistill.corpus.schema import CorpusReadError, Row
from mdistill.log import get_logger

log = get_logger("corpus")


def po_encoding(path: str) -> str | None:
    """UTF-8 when a PO declares another charset but is written in UTF-8 (multi-byte sequences that
    decode strictly: latin-1 text almost never does); None to honour the declared charset."""
    import polib

    declared = polib.detect_encoding(path)
    try:
        if codecs.lookup(declared).name == "utf-8":
            return None
    except LookupError:
        return None
    raw = Path(path).read_bytes()
    if raw.isascii():  # the same text in either charset
        return None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    log.warning("%s: the header declares charset %s but the file is UTF-8: read as UTF-8", path, declared)
    return "utf-8"


def catalog_lang(path: str, header_lang: str | None) -> str | None:
    p = Path(path)
    for candidate in (header_lang, p.parent.parent.name if p.parent.name == "LC_MESSAGES" else None, p.stem):
        if candidate and (norm := try_normalize_lang(candidate)):
            return norm
    return None


def read_gettext(path: str, *, lang: str | None = None) -> Iterator[Row]:
    import polib

    try:
        cat = polib.mofile(path) if path.endswith(".mo") else polib.pofile(path, encoding=po_encoding(path))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CorpusReadError(f"{path}: unreadable gettext catalog: {e}") from e
    code = try_normalize_lang(lang) if lang else catalog_lang(path, cat.metadata.get("Language"))
    for i, e in enumerate(cat, 1):
        if e.msgid == "":
            continue
        pos = getattr(e, "linenum", None) or i  # PO: the entry's line; MO: its index
        if e.obsolete:
            yield Row(e.msgid, e.msgstr, code, pos, "obsolete")
        elif "fuzzy" in e.flags:
            yield Row(e.msgid, e.msgstr or None, code, pos, "fuzzy")
        elif e.msgid_plural:
            forms = e.msgstr_plural
            if not forms or not forms.get(0):
                yield Row(e.msgid, None, code, pos, "untranslated")
                continue
            yield Row(e.msgid, forms[0], code, pos, None if code else "unknown_language")
            if forms.get(1):
                yield Row(e.msgid_plural, forms[1], code, pos, None if code else "unknown_language")
        elif not e.msgstr:
            yield Row(e.msgid, None, code, pos, "untranslated")
        else:
            yield Row(e.msgid, e.msgstr, code, pos, None if code else "unknown_language")
