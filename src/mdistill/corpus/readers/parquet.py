"""Parquet parallel corpora (columns en, text and lang, or a fixed language), streamed a row group
batch at a time. A file that is not valid Parquet (truncated, no footer) is an error naming it."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from mdistill.corpus.readers.jsonl import record_row
from mdistill.corpus.schema import CorpusReadError, Row


def read_parquet(path: str, *, fields: dict[str, str], lang: str | None, batch_rows: int = 65_536) -> Iterator[Row]:
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise CorpusReadError(f"{path}: not a readable Parquet file (footer): {e}") from e
    top = sorted({key.split(".")[0] for key in fields.values()})
    missing = [c for c in top if c not in f.schema_arrow.names]
    if missing:
        raise CorpusReadError(f"{path}: column(s) {missing} not in the file's columns {f.schema_arrow.names}")
    position = 0
    try:
        for batch in f.iter_batches(batch_size=batch_rows, columns=top):
            for obj in batch.to_pylist():
                position += 1
                yield record_row(obj, fields, lang, position, repr(obj))
    except (pa.ArrowException, OSError) as e:
        raise CorpusReadError(f"{path}: unreadable after row {position}: {e}") from e
