"""Hugging Face ``datasets``: a dataset saved with ``save_to_disk`` (or ``load_dataset(...)`` of
local files), iterated in Arrow batches from its memory-mapped cache, never loaded whole.

Fields as for JSONL; a dotted key reaches into nested features (``translation.de``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mdistill.corpus.readers.jsonl import record_row
from mdistill.corpus.schema import CorpusReadError, Row


def load_hf(path: str, split: str | None):
    """A ``Dataset`` from a ``save_to_disk`` folder, or from a data file / builder name offline."""
    import datasets

    p = Path(path)
    if p.is_file():  # a local data file: the builder from its extension
        builder = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}.get(p.suffix)
        if builder is None:
            raise CorpusReadError(f"{path}: no datasets builder for {p.suffix!r} files")
        ds = datasets.load_dataset(builder, data_files=str(p), split=split or "train")
    elif (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(path)  # saved with save_to_disk
    else:
        ds = datasets.load_dataset(path, split=split)  # a local folder of data files, or a hub id when online
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            raise CorpusReadError(f"{path}: a DatasetDict with splits {list(ds)}; set split:")
        ds = ds[split]
    return ds


def read_hf(path: str, *, fields: dict[str, str], lang: str | None, split: str | None = None, batch_rows: int = 8192) -> Iterator[Row]:
    ds = load_hf(path, split)
    top = sorted({key.split(".")[0] for key in fields.values()})
    missing = [c for c in top if c not in ds.column_names]
    if missing:
        raise CorpusReadError(f"{path}: column(s) {missing} not in the dataset's columns {ds.column_names}")
    ds = ds.select_columns(top)
    position = 0
    for batch in ds.iter(batch_size=batch_rows):
        for i in range(len(batch[top[0]])):
            position += 1
            obj = {c: batch[c][i] for c in top}
            yield record_row(obj, fields, lang, position, repr(obj))
