"""Content-addressed Parquet cache of model outputs per text (teacher vectors, frozen student states).

Layout: ``<root>/<model fingerprint>/<shard>.parquet`` with a ``key`` column (hash of the text)
and the outputs (``embedding`` for the teacher). A shard is written under a temporary name and renamed when complete,
so a reader never sees a partial shard; files that are not complete shards are ignored, and a
shard that fails to read is reported and its keys are recomputed. Another teacher's vectors are
never read: they live under another fingerprint.

Shards carry Parquet page checksums (CRC32), checked on every read here: bytes damaged on disk
fail the read instead of coming back as changed or NaN vectors. Shards written before checksums
still read (pyarrow checks only pages that carry one); ``verify_cache`` also checks the content
(finite vectors, one vector size per column across shards), which catches those too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
TEXT_NORMALIZATION = "nfc-ws-v1"  # bump when mdistill.corpus.clean.normalize_text changes


def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


DOC_FILES = {"README.md"}  # the model card: rewritten with each run's metrics, changes no output


def _hash_files(h, root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and p.name not in DOC_FILES:
            h.update(str(p.relative_to(root)).encode())
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)


def model_fingerprint(model_dir: str | Path, **settings) -> str:
    """Hash of everything that changes a model's outputs: every file of the model directory
    (weights, tokenizer, pooling/normalize modules) and the run settings (max length, dtype,
    prompt, layers, ...), plus the text normalisation version."""
    h = hashlib.blake2b(digest_size=16)
    _hash_files(h, Path(model_dir))
    h.update(json.dumps({**settings, "text_normalization": TEXT_NORMALIZATION}, sort_keys=True).encode())
    return h.hexdigest()


class EmbeddingCache:
    def __init__(self, root: str | Path, fingerprint: str):
        self.dir = Path(root) / fingerprint
        self.fingerprint = fingerprint
        self.corrupt: list[Path] = []

    def shards(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("*.parquet") if not p.name.startswith("."))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Held for a whole pass: two runs filling the same fingerprint take turns, so the second
        computes only what the first did not, and no key is written twice."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def readable_shards(self) -> list[Path]:
        """Shards whose footer reads, that have a ``key`` column whose pages pass their checksums,
        and whose vector columns have the size the others (or meta.json's ``dim``) have; the others
        are moved to ``corrupt/`` (their texts are then missing and get recomputed). Reads only the
        footers and the key columns: the vectors are checked where they are read, or by ``verify_cache``."""
        good: dict[Path, tuple[dict[str, int], int]] = {}
        for shard in self.shards():
            try:
                with pq.ParquetFile(shard, page_checksum_verification=True) as f:
                    if "key" not in f.schema_arrow.names:
                        raise ValueError("no key column")
                    f.read(columns=["key"])  # a few bytes per row: verifies the key pages' checksums
                    good[shard] = (vector_columns(f.schema_arrow), f.metadata.num_rows)
            except Exception as e:  # truncated or garbled file: report, set aside, recompute
                log.warning("cache %s: unreadable shard %s (%s); its texts will be recomputed", self.fingerprint, shard.name, e)
                self.corrupt.append(shard)
        for shard, why in odd_vector_sizes(good, self.meta().get("dim")).items():
            # a join over shards of two vector sizes fails (or mixes spaces): set the odd ones aside
            log.warning("cache %s: shard %s: %s; its texts will be recomputed", self.fingerprint, shard.name, why)
            self.corrupt.append(shard)
            del good[shard]
        self.quarantine_corrupt()
        return list(good)

    def write_meta(self, **meta) -> None:
        """What produced these vectors (model, settings), and when the cache was last used."""
        self.dir.mkdir(parents=True, exist_ok=True)
        old = self.meta()
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        payload = {**old, **meta, "fingerprint": self.fingerprint, "created": old.get("created", now), "last_used": now}
        tmp = self.dir / f".meta.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, self.dir / "meta.json")

    def meta(self) -> dict:
        try:
            return json.loads((self.dir / "meta.json").read_text())
        except (OSError, ValueError):
            return {}

    def quarantine_corrupt(self) -> list[Path]:
        """Move the shards found unreadable to ``corrupt/`` so they are not read again; their keys
        are missing now and the next pass recomputes them. Returns the new locations."""
        moved = []
        for shard in dict.fromkeys(self.corrupt):
            if shard.exists():
                (self.dir / "corrupt").mkdir(exist_ok=True)
                dst = self.dir / "corrupt" / shard.name
                os.replace(shard, dst)
                moved.append(dst)
        return moved

    def write_table(self, table: pa.Table) -> Path:
        """Add a finished table (``key`` + outputs) as one shard: temporary name, then rename."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{uuid.uuid4().hex}.parquet.tmp"
        pq.write_table(table, tmp, write_page_checksum=True)  # damaged bytes then fail the read, not change vectors
        dst = self.dir / tmp.name[1:].removesuffix(".tmp")
        os.replace(tmp, dst)
        return dst

    def _read(self, shard: Path, columns: list[str]) -> pa.Table | None:
        try:
            return pq.read_table(shard, columns=columns, page_checksum_verification=True)
        except Exception as e:  # truncated or garbled file, or a page checksum mismatch: report, skip, recompute its keys
            log.warning("teacher cache: unreadable shard %s (%s); its keys will be recomputed", shard, e)
            self.corrupt.append(shard)
            return None

    def keys(self) -> set[str]:
        out: set[str] = set()
        for shard in self.shards():
            t = self._read(shard, ["key"])
            if t is not None:
                out.update(t.column("key").to_pylist())
        return out

    def missing(self, texts: Iterable[str]) -> list[str]:
        have = self.keys()
        seen: set[str] = set()
        todo = []
        for t in texts:
            k = text_key(t)
            if k not in have and k not in seen:
                seen.add(k)
                todo.append(t)
        return todo

    def write(self, keys: Sequence[str], embeddings: np.ndarray, dtype: str = "float32") -> Path:
        return self.write_table(embeddings_table(keys, embeddings, dtype))

    def read_table(self, texts: Sequence[str], columns: list[str]) -> pa.Table:
        """Rows for the distinct ``texts`` (``key`` + ``columns``), in no particular order."""
        want = pa.array(sorted({text_key(t) for t in texts}), pa.string())
        parts = []
        for shard in self.shards():
            t = self._read(shard, ["key", *columns])
            if t is not None:
                parts.append(t.filter(pc.is_in(t.column("key"), value_set=want)))
        table = pa.concat_tables(parts) if parts else pa.table({"key": pa.array([], pa.string())})
        if table.num_rows:
            # one row per key, even if two runs raced to write the same key
            _, first = np.unique(np.asarray(table.column("key").to_pylist(), dtype=object), return_index=True)
            table = table.take(pa.array(np.sort(first)))
        if table.num_rows != len(want):
            raise KeyError(f"cache {self.fingerprint}: {len(want) - table.num_rows} of {len(want)} texts missing")
        return table

    def lookup(self, texts: Sequence[str], column: str = "embedding") -> np.ndarray:
        """Vectors (``embedding``, or ``logits`` of a classifier teacher) for ``texts`` (float32,
        input order); KeyError names a text not in the cache."""
        want = {text_key(t) for t in texts}
        found: dict[str, np.ndarray] = {}
        for shard in self.shards():
            t = self._read(shard, ["key", column])
            if t is None:
                continue
            keys = t.column("key").to_pylist()
            vecs = None
            for i, k in enumerate(keys):
                if k in want and k not in found:
                    if vecs is None:
                        vecs = embedding_matrix(t.column(column))
                    found[k] = vecs[i].copy()  # a view would keep the whole shard's matrix alive
        out = []
        for text in texts:
            k = text_key(text)
            if k not in found:
                raise KeyError(f"teacher cache {self.fingerprint}: no vector for {text[:80]!r}")
            out.append(found[k])
        return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def embeddings_table(keys: Sequence[str], embeddings: np.ndarray, dtype: str = "float32") -> pa.Table:
    arr = np.ascontiguousarray(embeddings, dtype=np.float16 if dtype == "float16" else np.float32)
    flat = pa.array(arr.reshape(-1))
    return pa.table({"key": pa.array(list(keys), pa.string()), "embedding": pa.FixedSizeListArray.from_arrays(flat, arr.shape[1])})


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else len(arr[0])
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(arr), dim)


def cache_dirs(root: str | Path) -> list[Path]:
    """Every fingerprint folder under a cache root (``<cache>/teacher``, ``<cache>/student_states``)."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def cache_stats(d: Path) -> dict:
    """Shards, rows, distinct keys, bytes, leftovers of one fingerprint folder (reads the key column)."""
    c = EmbeddingCache(d.parent, d.name)
    rows, keys = 0, set()
    for shard in c.shards():
        t = c._read(shard, ["key"])
        if t is not None:
            rows += t.num_rows
            keys.update(t.column("key").to_pylist())
    return {
        "fingerprint": d.name,
        "model": c.meta().get("model"),
        "kind": c.meta().get("kind"),
        "last_used": c.meta().get("last_used"),
        "shards": len(c.shards()),
        "rows": rows,
        "distinct_keys": len(keys),
        "bytes": sum(p.stat().st_size for p in c.shards()),
        "unreadable_shards": [str(p) for p in c.corrupt],
        "quarantined_shards": len(list((d / "corrupt").glob("*"))) if (d / "corrupt").is_dir() else 0,
        "leftover_tmp": len(list(d.glob(".*.tmp"))),
    }


def vector_columns(schema: pa.Schema) -> dict[str, int]:
    """The fixed-size-list float columns of a shard (``embedding``, ``pooled``, ``logits``, ...) -> their list size."""
    return {f.name: f.type.list_size for f in schema if pa.types.is_fixed_size_list(f.type) and pa.types.is_floating(f.type.value_type)}


def odd_vector_sizes(shards: dict[Path, tuple[dict[str, int], int]], meta_dim: object = None) -> dict[Path, str]:
    """``shards``: path -> (vector column -> list size, rows). One fingerprint has one vector size
    per column: the one meta.json records as ``dim`` (an int for every vector column, or a dict per
    column), else the size most rows have. Returns the shards with another size, and why."""
    want: dict[str, tuple[int, str]] = {}  # column -> (size, where it comes from)
    sizes: dict[str, dict[int, int]] = {}
    for dims, rows in shards.values():
        for col, size in dims.items():
            sizes.setdefault(col, {}).setdefault(size, 0)
            sizes[col][size] += rows
    for col, by_size in sizes.items():
        recorded = meta_dim.get(col) if isinstance(meta_dim, dict) else meta_dim
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            want[col] = (recorded, "meta.json dim")
        else:  # most rows win; a tie goes to the smaller size (any choice: the others are recomputed)
            want[col] = (max(sorted(by_size), key=lambda size: by_size[size]), "most rows")
    odd = {}
    for shard, (dims, _) in shards.items():
        wrong = [
            f"{col} has {size} values per vector, the cache {want[col][0]} ({want[col][1]})"
            for col, size in dims.items()
            if size != want[col][0]
        ]
        if wrong:
            odd[shard] = "; ".join(wrong)
    return odd


def _finite_problem(table: pa.Table) -> str | None:
    """What is wrong with the values of a fully read shard: a null or non-finite vector (NaN, inf)
    in a vector column, or frozen-pass states (``hidden`` float16 bytes) whose size does not match
    ``length`` x ``dim`` or that hold a non-finite value. None when the content is sound."""
    for col in vector_columns(table.schema):
        arr = table.column(col).combine_chunks()
        if arr.null_count:
            return f"{col}: {arr.null_count} null vector(s)"
        values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False))
        if values.size and not np.isfinite(values).all():
            rows = (~np.isfinite(values.reshape(len(arr), -1))).any(axis=1)
            return f"{col}: {int(rows.sum())} of {len(arr)} vector(s) not finite (NaN/inf), first at row {int(np.argmax(rows))}"
    if {"hidden", "length", "dim"} <= set(table.column_names) and pa.types.is_binary(table.schema.field("hidden").type):
        hidden, length, dim = (table.column(c).combine_chunks() for c in ("hidden", "length", "dim"))
        if hidden.null_count or length.null_count or dim.null_count:
            return "hidden/length/dim: null frozen-pass state(s)"
        want = np.asarray(length.to_numpy(), np.int64) * np.asarray(dim.to_numpy(), np.int64) * 2
        wrong = np.asarray(pc.binary_length(hidden).to_numpy(), np.int64) != want
        if wrong.any():
            return (
                f"hidden: {int(wrong.sum())} state(s) whose bytes are not length x dim float16 values, first at row {int(np.argmax(wrong))}"
            )
        # all states at once, straight from the Arrow buffers (each row's size is even: checked above)
        _, offsets_buf, data_buf = hidden.buffers()
        offsets = np.frombuffer(offsets_buf, np.int32)[hidden.offset : hidden.offset + len(hidden) + 1]
        if data_buf is not None and len(offsets) and offsets[-1] > offsets[0]:
            values = np.frombuffer(data_buf, np.uint8)[offsets[0] : offsets[-1]].view(np.float16)
            if not np.isfinite(values).all():
                return "hidden: non-finite (NaN/inf) frozen-pass states"
    return None


def verify_cache(d: Path, fix: bool = False) -> dict:
    """Read every shard in full, checking its page checksums: report unreadable ones, those
    without a ``key`` column, those with a null or non-finite vector, and those whose vector size
    differs from the other shards' (or from meta.json's ``dim``); count duplicate keys. With
    ``fix``, move the bad shards to ``corrupt/`` (their keys get recomputed). ``problems``: shard -> why."""
    c = EmbeddingCache(d.parent, d.name)
    problems: dict[Path, str] = {}
    dims: dict[Path, tuple[dict[str, int], int]] = {}
    keys: dict[Path, list[str]] = {}
    for shard in c.shards():
        try:
            t = pq.read_table(shard, page_checksum_verification=True)
            if "key" not in t.column_names:
                raise ValueError("no key column")
        except Exception as e:  # any failure to read a shard in full is corruption to report
            problems[shard] = f"unreadable: {type(e).__name__}: {e}"
            continue
        if why := _finite_problem(t):
            problems[shard] = why
            continue
        dims[shard] = (vector_columns(t.schema), t.num_rows)
        keys[shard] = t.column("key").to_pylist()
    for shard, why in odd_vector_sizes(dims, c.meta().get("dim")).items():
        problems[shard] = why
    seen: set[str] = set()
    dup = 0
    for shard, ks in keys.items():
        if shard not in problems:  # duplicates among the shards that stay
            dup += len(ks) - len(set(ks) - seen)
            seen.update(ks)
    bad = sorted(problems)
    for shard in bad:
        log.warning("cache %s: bad shard %s (%s)", d.name, shard.name, problems[shard])
    moved = []
    if fix:
        c.corrupt = bad
        moved = c.quarantine_corrupt()
    return {
        "fingerprint": d.name,
        "shards": len(c.shards()) + len(moved),
        "bad_shards": [str(p) for p in bad],
        "problems": {str(p): problems[p] for p in bad},
        "duplicate_rows": dup,
        "moved": [str(p) for p in moved],
    }


def gc_cache(root: Path, *, unused_days: float | None = None, min_age_s: float = 3600, dry_run: bool = False) -> list[Path]:
    """Remove what no reader uses: temporary files of interrupted passes older than ``min_age_s``
    (a running pass may still own younger ones), quarantined shards, and, with ``unused_days``,
    whole fingerprint folders not used for that long. Returns what was (or would be) removed."""
    import shutil

    now = time.time()
    doomed: list[Path] = []
    for d in cache_dirs(root):
        c = EmbeddingCache(d.parent, d.name)
        last = c.meta().get("last_used")
        age_days = (now - time.mktime(time.strptime(last, "%Y-%m-%dT%H:%M:%S"))) / 86400 if last else None
        if unused_days is not None and age_days is not None and age_days > unused_days:
            doomed.append(d)
            continue
        doomed += [p for p in d.glob(".*.tmp") if now - p.stat().st_mtime > min_age_s]
        if (d / "corrupt").is_dir():
            doomed.append(d / "corrupt")
    if not dry_run:
        for p in doomed:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return doomed
