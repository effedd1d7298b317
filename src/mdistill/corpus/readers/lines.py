"""Line-based files split into byte ranges, so one big TSV/JSONL file is read by many tasks.

A range starts and ends on a line boundary and knows the number of its first line, so every
task reports exact 1-based line numbers. Planning reads the file once, a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

CHUNK = 8 << 20


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
            pos += len(line)
            yield n, line.rstrip(b"\r\n")
            n += 1


def decode(line: bytes, encoding: str = "utf-8") -> tuple[str, bool]:
    """``(text, ok)``: the decoded line, or a lossy version and ``False`` for invalid bytes."""
    try:
        return line.decode(encoding), True
    except UnicodeDecodeError:
        return line.decode(encoding, errors="replace"), False
