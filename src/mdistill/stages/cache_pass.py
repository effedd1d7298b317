"""One pass of a model over texts into a content-addressed cache, on Ray Data, never through
the driver's memory:

    needed = distinct(texts)               # one row per text key (a group-by on Ray Data)
    todo = missing(cache, needed)          # an anti-join with the cache's key column
    out = todo.map_batches(Predictor, **pool_args(...))   # in the recipe: an actor pool
    stats = commit(cache, needed, out)     # shards streamed back, committed atomically

The driver holds one commit's worth of outputs at a time (``commit_rows``); a pass killed midway
keeps every committed shard, and the next pass computes only the rest. Run the pass under
``cache.lock()`` so that two runs filling the same fingerprint take turns.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray

from mdistill.report.schema import CachePass
from mdistill.resources import inference_plan
from mdistill.teacher.cache import EmbeddingCache, text_key


def pool_args(predictor_kwargs: dict, batch_rows: int, resources: dict, max_actors: int | None = None) -> dict:
    """``map_batches`` arguments of an actor pool sized to the cluster (``resources.inference_plan``):
    one actor per GPU (``num_gpus=1``), or CPU actors that leave room for the read tasks."""
    plan = inference_plan(resources, max_actors=max_actors)
    return dict(
        fn_constructor_kwargs={**predictor_kwargs, "threads": plan.threads},
        batch_size=batch_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.size),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )


def add_keys(batch: pa.Table, columns: tuple[str, ...] = ("text",)) -> pa.Table:
    """``key`` (and ``<column>_key``) = hash of each text column (``text_key``)."""
    for c in columns:
        name = "key" if c == "text" else f"{c}_key"
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.array([text_key(t) for t in batch.column(c).to_pylist()], pa.string()))
    return batch


def _first_row(group: pa.Table) -> pa.Table:
    return group.slice(0, 1)


def distinct(texts: ray.data.Dataset, rows_hint: int, rows_per_partition: int = 50_000) -> ray.data.Dataset:
    """One ``(key, text)`` row per distinct text (materialized: the pass counts it and joins it).
    ``rows_hint`` (about how many texts) sizes the group-by's partitions: Ray's default of 200
    costs more than the work on small corpora."""
    keyed = texts.select_columns(["text"]).map_batches(add_keys, batch_format="pyarrow")
    partitions = max(2, min(200, -(-rows_hint // rows_per_partition)))
    return keyed.groupby("key", num_partitions=partitions).map_groups(_first_row, batch_format="pyarrow").materialize()


def join_partitions(total_bytes: int, partition_bytes: int = 64 << 20, most: int = 256) -> int:
    """Hash partitions of a join: one per ``partition_bytes`` of input, which bounds a join task's memory."""
    return max(2, min(most, -(-total_bytes // partition_bytes)))


def missing(cache: EmbeddingCache, needed: ray.data.Dataset) -> ray.data.Dataset:
    """The rows of ``needed`` whose key the cache lacks."""
    shards = cache.readable_shards()
    if not shards:
        return needed
    keys = ray.data.read_parquet([str(p) for p in shards]).select_columns(["key"])
    # the key column is small: the texts to embed size the join
    return needed.join(keys, join_type="left_anti", num_partitions=join_partitions(2 * needed.size_bytes()), on=("key",))


def commit(
    cache: EmbeddingCache, needed: ray.data.Dataset, outputs: ray.data.Dataset, *, commit_rows: int = 4096, t0: float | None = None
) -> CachePass:
    """Write ``outputs`` (``key`` + model outputs) to the cache as shards of about ``commit_rows``."""
    t0 = time.time() if t0 is None else t0
    pending: list[pa.Table] = []
    n_pending = computed = 0
    for batch in outputs.iter_batches(batch_size=None, batch_format="pyarrow"):
        pending.append(batch)
        n_pending += batch.num_rows
        if n_pending >= commit_rows:
            cache.write_table(pa.concat_tables(pending))
            computed += n_pending
            pending, n_pending = [], 0
    if pending:
        cache.write_table(pa.concat_tables(pending))
        computed += n_pending
    distinct_texts = needed.count()
    return CachePass(
        fingerprint=cache.fingerprint,
        distinct_texts=distinct_texts,
        cache_hits=distinct_texts - computed,
        computed=computed,
        seconds=round(time.time() - t0, 2),
        corrupt_shards=[str(p) for p in cache.corrupt],
    )
