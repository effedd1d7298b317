"""Line-based files split into byte ranges, so one big TSV/JSONL file is read by many tasks.

A range starts and ends on a line boundary and knows the number of its first line, so every
task reports exact 1-based line numbers. Planning reads the file once, a chunk at a time.
A UTF-8 byte order mark at the start of a file is not text: ``iter_lines`` drops it.
Also here: the checks every file reader makes before reading (compressed input, the encoding).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from pathlib import Path

from mdistill.corpus.schema import CorpusReadError

CHUNK = 8 << 20
UTF8_BOM = b"\xef\xbb\xbf"

# Magic bytes of compressed files: (name, how to decompress). Read as text they would be a line
# or two of invalid UTF-8, the real content lost; bz2 needs its block (or end-of-stream) magic too,
# so a text file that starts with "BZh" is not taken for one.
_COMPRESSED = [
    (re.compile(rb"\A\x1f\x8b"), "gzip", "gunzip -k"),
    (re.compile(rb"\A\xfd7zXZ\x00"), "xz", "unxz -k"),
    (re.compile(rb"\ABZh[1-9](\x31\x41\x59\x26\x53\x59|\x17\x72\x45\x38\x50\x90)"), "bzip2", "bunzip2 -k"),
    (re.compile(rb"\A\x28\xb5\x2f\xfd"), "zstd", "unzstd"),
    (re.compile(rb"\A\x04\x22\x4d\x18"), "lz4", "unlz4"),
    (re.compile(rb"\APK\x03\x04"), "zip", "unzip"),
]
COMPRESSED_SUFFIXES = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".zip")


def compression(path: str | Path) -> tuple[str, str] | None:
    """``(kind, decompress command)`` when the file starts with a compressed format's magic bytes."""
    with open(path, "rb") as f:
        head = f.read(10)
    return next(((kind, tool) for rx, kind, tool in _COMPRESSED if rx.match(head)), None)


def check_not_compressed(path: str | Path, fmt: str) -> None:
    """``CorpusReadError`` naming the file when it is compressed: the readers take plain files."""
    found = compression(path)
    if found:
        kind, tool = found
        raise CorpusReadError(
            f"{path}: the file is {kind}-compressed; format {fmt} reads uncompressed files: "
            f"decompress it first (e.g. `{tool} {path}`) and point the source at the result"
        )


def check_encoding(path: str | Path, encoding: str, *, line_based: bool) -> None:
    """A clear error naming the file and the ``encoding`` key for a codec Python does not know (or
    that is no text encoding, like base64), or, ``line_based`` (TSV/JSONL, split on newline bytes),
    one whose newline is not the byte ``\\n`` (UTF-16, UTF-32)."""
    key = f"{path}: encoding {encoding!r} (the source's encoding key)"
    try:
        newline = "\n".encode(encoding)
    except LookupError:
        raise ValueError(f"{key} is not a known text codec, e.g. utf-8, latin-1, cp1252") from None
    if line_based and newline != b"\n":
        raise ValueError(f"{key} is not ASCII-compatible: lines are split on newline bytes; convert the file to UTF-8 first (iconv)")


def text_encoding(encoding: str) -> str:
    """The codec to open a text file with: UTF-8 drops a leading byte order mark (``utf-8-sig``)."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def line_ranges(path: str | Path, target_bytes: int = 32 << 20) -> list[tuple[int, int, int]]:
    """``[(start, end, first_line)]`` covering the file, each about ``target_bytes`` long."""
    size = Path(path).stat().st_size
    out: list[tuple[int, int, int]] = []
    start, line = 0, 1
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + target_bytes, size))
            if f.tell() < size:
                f.readline()  # finish the line the boundary fell into
            end = f.tell()
            out.append((start, end, line))
            f.seek(start)
            left = end - start
            while left:
                chunk = f.read(min(CHUNK, left))
                line += chunk.count(b"\n")
                left -= len(chunk)
            start = end
    return out or [(0, 0, 1)]


def iter_lines(path: str | Path, start: int = 0, end: int | None = None, first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line_without_newline)`` for the lines in ``[start, end)``."""
    with open(path, "rb", buffering=1 << 20) as f:
        f.seek(start)
        pos, n = start, first_line
        while end is None or pos < end:
            line = f.readline()
            if not line:
                return
            if pos == 0 and line.startswith(UTF8_BOM):  # the file's byte order mark, not the first field's text
                line = line[len(UTF8_BOM) :]
                pos += len(UTF8_BOM)
            pos += len(line)
            yield n, line.rstrip(b"\r\n")
            n += 1


def decode(line: bytes, encoding: str = "utf-8") -> tuple[str, bool]:
    """``(text, ok)``: the decoded line, or a lossy version and ``False`` for invalid bytes."""
    try:
        return line.decode(encoding), True
    except UnicodeDecodeError:
        return line.decode(encoding, errors="replace"), False
