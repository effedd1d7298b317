"""Parallel text from LibreOffice help (Debian ``libreoffice-help-<lang>`` packages).

Every help paragraph carries the same id (``par_id…``, ``hd_id…``) in every language, so an
English paragraph and its translation align exactly by (file, id). The file path names the
module (swriter, scalc, …); the corpus keeps it per row in ``origin`` (``libreoffice-help/<path>``),
which ``mdistill.tasks.help_topics`` turns into a topic label.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from mdistill.corpus.schema import Row

_ID = re.compile(r"^(par|hd)_id\d+$")
_VOID = {"br", "img", "input", "meta", "link", "hr", "wbr", "source", "col", "area", "base", "embed", "param", "track"}


class _Paragraphs(HTMLParser):
    """Collects the text of each element whose id looks like ``par_id123`` / ``hd_id123``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: dict[str, str] = {}
        self._stack: list[tuple[str, str | None]] = []  # (tag, id of a collected element or None)
        self._buf: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        pid = dict(attrs).get("id")
        collect = pid if pid and _ID.match(pid) and pid not in self._buf and pid not in self.out else None
        if collect:
            self._buf[collect] = []
        self._stack.append((tag, collect))

    def handle_endtag(self, tag: str) -> None:
        # pop to the matching tag; tolerate unclosed children as browsers do
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                for _, pid in self._stack[i:]:
                    if pid:
                        self.out[pid] = " ".join("".join(self._buf.pop(pid)).split())
                del self._stack[i:]
                return

    def handle_data(self, data: str) -> None:
        for buf in self._buf.values():
            buf.append(data)


def paragraphs(html_file: Path) -> dict[str, str]:
    p = _Paragraphs()
    p.feed(html_file.read_text(encoding="utf-8", errors="replace"))
    p.close()
    return {k: v for k, v in p.out.items() if v}


def help_lang_dir(lang: str) -> str:
    """mdistill language code -> LibreOffice help folder (``zh_CN`` -> ``zh-CN``)."""
    return {"en": "en-US"}.get(lang, lang.replace("_", "-"))


def file_pairs(help_root: Path, rel: str, langs: list[str]) -> Iterator[Row]:
    """Pairs of one help file in every language; ``position`` = the English paragraph's ordinal."""
    en_root = help_root / "en-US"
    en_par = None
    for lang in langs:
        xx_root = help_root / help_lang_dir(lang)
        if not xx_root.is_dir():
            raise FileNotFoundError(f"no LibreOffice help for {lang!r} under {help_root}")
        xx_file = xx_root / rel
        if not xx_file.exists():
            continue
        en_par = paragraphs(en_root / rel) if en_par is None else en_par
        xx_par = paragraphs(xx_file)
        for i, (pid, en) in enumerate(en_par.items(), 1):
            if pid in xx_par:
                yield Row(en, xx_par[pid], lang, i)


def list_help_files(help_root: Path, max_files: int | None = None) -> list[str]:
    en = help_root / "en-US"
    files = sorted(str(p.relative_to(en)) for p in en.rglob("*.html"))
    return files[:max_files] if max_files else files
