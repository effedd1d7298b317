"""One pass of a model over texts into a content-addressed cache, on Ray Data, never through
the driver's memory:

    sentences = Distinct(texts, rows)          # one row per text key (a Ray Data group-by), when first needed
    todo = plan(cache, sentences, selection)   # an anti-join with the cache's key column
    out = todo.rows.map_batches(Predictor, **pool_args(...)) if todo.rows else None   # in the recipe: an actor pool
    stats = commit(todo, out)                  # shards streamed back, committed atomically

On a cluster the pool spreads over every node (one actor per GPU, wherever the GPUs are) and the
shards are written by tasks pinned to the driver's node: a cache on the driver's disk is whole
whichever nodes computed it, and the pass counts the rows each node computed.

The driver holds one commit's worth of outputs at a time (``commit_rows``); a pass killed midway
keeps every committed shard, and the next pass computes only the rest. A finished pass records
that the cache covers its selection (``<cache>/covers/<selection>.json``, listing the shards that
hold it): a re-run of the same selection plans nothing, without deduplicating or joining anything,
as long as those shards are all still there. Run a pass under ``cache.lock()`` so that two runs
filling the same fingerprint take turns.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import ray

from mdistill.report.schema import CachePass
from mdistill.resources import Nodes, inference_plan
from mdistill.teacher.cache import EmbeddingCache, text_key
from mdistill.teacher.predictor import NODE


def pool_args(predictor_kwargs: dict, batch_rows: int, nodes: Nodes, max_actors: int | None = None) -> dict:
    """``map_batches`` arguments of an actor pool sized to the cluster, node by node
    (``ray.nodes()``; ``resources.inference_plan``): one actor per GPU (``num_gpus=1``), or CPU
    actors that leave room for the read tasks."""
    p = inference_plan(nodes, max_actors=max_actors)
    return dict(
        fn_constructor_kwargs={**predictor_kwargs, "threads": p.threads},
        batch_size=batch_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=p.size),
        num_cpus=p.num_cpus,
        num_gpus=p.num_gpus,
    )


def add_keys(batch: pa.Table, columns: tuple[str, ...] = ("text",)) -> pa.Table:
    """``key`` (and ``<column>_key``) = hash of each text column (``text_key``)."""
    for c in columns:
        name = "key" if c == "text" else f"{c}_key"
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.array([text_key(t) for t in batch.column(c).to_pylist()], pa.string()))
    return batch


class Distinct:
    """``(key, text[, flag])``, one row per distinct text: a Ray Data group-by, run (and
    materialized) the first time a pass needs it, never when every cache already covers the run.
    ``rows_hint`` (about how many texts) sizes the group-by: Ray's default of 200 partitions
    costs more than the work on small corpora."""

    def __init__(self, texts: ray.data.Dataset, rows_hint: int, *, flag: str | None = None, rows_per_partition: int = 50_000):
        self.texts, self.flag, self.partitions = texts, flag, max(2, min(200, -(-rows_hint // rows_per_partition)))
        self._ds: ray.data.Dataset | None = None

    def __call__(self) -> ray.data.Dataset:
        if self._ds is None:
            from ray.data.aggregate import Max, Min

            keyed = self.texts.map_batches(add_keys, batch_format="pyarrow")
            # a vectorised hash aggregate (not a Python call per group): every text of a key is the
            # same text, so its min is it; a flag's max is "any row has it"
            aggs = [Min("text", alias_name="text")] + ([Max(self.flag, alias_name=self.flag)] if self.flag else [])
            self._ds = keyed.groupby("key", num_partitions=self.partitions).aggregate(*aggs).materialize()
        return self._ds


def join_partitions(total_bytes: int, partition_bytes: int = 64 << 20, most: int = 256) -> int:
    """Hash partitions of a join: one per ``partition_bytes`` of input, which bounds a join task's memory."""
    return max(2, min(most, -(-total_bytes // partition_bytes)))


BROADCAST_BYTES = 64 << 20  # a join's right side up to this size is broadcast, as Spark's autoBroadcastJoinThreshold does


def _broadcast(batch: pa.Table, refs: list, key: str, left_key: str, columns: list[str], anti: bool) -> pa.Table:
    """One block of a broadcast join: the right side comes zero-copy from the object store."""
    right = pa.concat_tables(ray.get(refs))
    keys = right.column(key).combine_chunks()
    if anti:
        return batch.filter(pc.invert(pc.is_in(batch.column(left_key), value_set=keys)))
    idx = pc.index_in(batch.column(left_key), value_set=keys)  # the first match; Arrow's hash join takes no nested payload columns
    keep = pc.is_valid(idx)
    batch, idx = batch.filter(keep), idx.filter(keep)
    for c in columns:
        batch = batch.append_column(c, right.column(c).combine_chunks().take(idx))
    return batch


def join_files(
    left: ray.data.Dataset, files: list[str], *, key: str, left_key: str, columns: list[str], anti: bool = False
) -> ray.data.Dataset:
    """``left`` joined with the rows of Parquet ``files`` on ``left_key == key`` (inner, adding
    ``columns``; or ``anti``: the rows of ``left`` without a match). A hash join on Ray Data when the
    files are big; when they are small, a broadcast join: their rows go to the object store once
    (read by Ray tasks, never by this process) and each block of ``left`` joins them where it is,
    which saves the shuffle's aggregator actors (seconds each on a small machine)."""
    size = sum(os.path.getsize(f) for f in files)
    right = ray.data.read_parquet(files).select_columns([key, *columns])
    if size > BROADCAST_BYTES:
        right = right.rename_columns({key: left_key}) if key != left_key else right
        how = "left_anti" if anti else "inner"
        return left.join(right, join_type=how, num_partitions=join_partitions(2 * size), on=(left_key,))
    kwargs = {"refs": right.to_arrow_refs(), "key": key, "left_key": left_key, "columns": columns, "anti": anti}
    return left.map_batches(_broadcast, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=None)


@dataclass
class Todo:
    """What a pass must compute for one selection of texts."""

    cache: EmbeddingCache
    selection: str | None  # what the texts are (None: record no coverage)
    distinct: int  # distinct texts wanted
    needed: ray.data.Dataset | None  # those texts (None: the cache covered them, nothing was read)
    rows: ray.data.Dataset | None  # those the cache lacks, in blocks of ``block_rows``; None: none
    t0: float


def _covers_file(cache: EmbeddingCache, selection: str):
    return cache.dir / "covers" / f"{selection}.json"


def _covered(cache: EmbeddingCache, selection: str | None) -> int | None:
    """Distinct texts of ``selection`` if an earlier pass covered it and its shards are all still there."""
    if selection is None:
        return None
    try:
        rec = json.loads(_covers_file(cache, selection).read_text())
    except (OSError, ValueError):
        return None
    return rec["distinct"] if all((cache.dir / s).is_file() for s in rec["shards"]) else None


def plan(cache: EmbeddingCache, texts: Callable[[], ray.data.Dataset], selection: str | None, block_rows: int = 1024) -> Todo:
    """``texts()``: the deduplicated texts (``key``, ``text``). Returns what the cache lacks, in
    blocks of at most ``block_rows`` (an actor call's worth of outputs, ~50 MB of states at most,
    committed as it comes back, so a killed pass loses little)."""
    t0 = time.time()
    covered = _covered(cache, selection)
    if covered is not None:
        return Todo(cache, selection, covered, None, None, t0)
    needed = texts().materialize()
    shards = cache.readable_shards()
    todo = needed
    if shards:
        todo = join_files(needed, [str(p) for p in shards], key="key", left_key="key", columns=[], anti=True)
    todo = todo.repartition(target_num_rows_per_block=block_rows).materialize()
    return Todo(cache, selection, needed.count(), needed, todo if todo.count() else None, t0)


def _write_shard(batch: pa.Table, root: str, fingerprint: str) -> pa.Table:
    """A Ray Data task: one batch of outputs as one cache shard (temporary name, then rename: a
    killed pass leaves whole shards only). Returns just the rows per computing node and the node
    that wrote them, so the outputs never pass through the driver."""
    if NODE in batch.column_names:
        counts = pc.value_counts(batch.column(NODE))
        producers, rows = counts.field("values"), counts.field("counts").cast(pa.int64())
        batch = batch.drop_columns([NODE])
    else:
        producers, rows = pa.array([""], pa.string()), pa.array([batch.num_rows], pa.int64())
    EmbeddingCache(root, fingerprint).write_table(batch)
    writer = ray.get_runtime_context().get_node_id()
    return pa.table({"producer": producers, "rows": rows, "writer": pa.array([writer] * len(rows), pa.string())})


def commit(todo: Todo, outputs: ray.data.Dataset | None, *, commit_rows: int = 4096) -> CachePass:
    """Write ``outputs`` (``key`` + model outputs) to the cache as shards of about ``commit_rows``
    (by Ray Data tasks, as the outputs come), then record that the cache covers the selection."""
    cache = todo.cache
    computed, by_node, writers = 0, {}, set()
    if outputs is not None:
        written = outputs.map_batches(
            _write_shard,
            fn_kwargs={"root": str(cache.dir.parent), "fingerprint": cache.fingerprint},
            batch_size=commit_rows,
            batch_format="pyarrow",
            num_cpus=0.25,  # I/O: must not wait for the CPUs the actor pool holds
            # the cache is this process's: on a cluster its disk may be the driver node's alone
            label_selector={"ray.io/node-id": ray.get_runtime_context().get_node_id()},
        )
        cache.dir.mkdir(parents=True, exist_ok=True)
        for b in written.iter_batches(batch_size=None, batch_format="pyarrow"):
            for producer, rows, writer in zip(*(b.column(c).to_pylist() for c in ("producer", "rows", "writer"))):
                computed += rows
                by_node[producer] = by_node.get(producer, 0) + rows
                writers.add(writer)
    if todo.selection is not None and todo.needed is not None:
        f = _covers_file(cache, todo.selection)
        f.parent.mkdir(exist_ok=True)
        tmp = f.with_name(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({"distinct": todo.distinct, "shards": [p.name for p in cache.shards()]}))
        os.replace(tmp, f)
    return CachePass(
        fingerprint=cache.fingerprint,
        distinct_texts=todo.distinct,
        cache_hits=todo.distinct - computed,
        computed=computed,
        seconds=round(time.time() - todo.t0, 2),
        corrupt_shards=[str(p) for p in cache.corrupt],
        computed_by_node=by_node,
        written_on=sorted(writers),
    )
