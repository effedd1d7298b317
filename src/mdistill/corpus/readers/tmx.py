"""TMX translation memories (TMX 1.4; ``lang`` of TMX 1.1 too), streamed unit by unit.

A ``<tu>`` holds one ``<tuv>`` per language; a unit with English and N other languages gives N
pairs. Inline codes (``<bpt>``, ``<ept>``, ``<ph>``, ``<it>``, ``<ut>``) are markup of the
original document, not text, and are dropped; ``<hi>``/``<sub>`` content is kept. Malformed XML
stops the read with an error naming the file, line and column.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

from mdistill.corpus.langs import try_normalize_lang
from mdistill.corpus.schema import CorpusReadError, Row, truncate

_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_CODES = {"bpt", "ept", "ph", "it", "ut"}


def seg_text(seg: ET.Element) -> str:
    """The text of a segment without inline codes (their tails are text). Iterative: markup nested
    thousands deep (``<hi><hi>...``) must not raise RecursionError."""
    parts: list[str] = []
    todo: list[ET.Element | str] = [seg]  # a stack: elements to open, text to emit
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            parts.append(item)
            continue
        parts.append(item.text or "")
        for child in reversed(item):
            todo.append(child.tail or "")
            if child.tag not in _CODES:
                todo.append(child)
    return "".join(parts)


def read_tmx(path: str, *, en_lang: str = "en") -> Iterator[Row]:
    position = 0
    try:
        for _, el in ET.iterparse(path, events=("end",)):
            if el.tag != "tu":
                continue
            position += 1
            segs: dict[str | None, str] = {}
            bad: list[str] = []
            for tuv in el.iter("tuv"):
                code = tuv.get(_XML_LANG) or tuv.get("lang")
                seg = tuv.find("seg")
                norm = try_normalize_lang(code) if code else None
                if norm is None:
                    bad.append(str(code))
                elif seg is not None:
                    segs.setdefault(norm, seg_text(seg))
            el.clear()  # bounded memory: drop the unit once read
            for code in bad:
                yield Row(None, None, code, position, "unknown_language", truncate(str(segs)))
            en = segs.pop(en_lang, None)
            if en is None:
                for lang, text in segs.items():
                    yield Row(None, text, lang, position, "no_english", truncate(text))
                continue
            for lang, text in segs.items():
                yield Row(en, text, lang, position)
    except ET.ParseError as e:
        line, col = e.position
        raise CorpusReadError(f"{path}: malformed TMX at line {line}, column {col} (after unit {position}): {e}") from e
