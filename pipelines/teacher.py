"""Teacher recipe: embed every distinct text once, on a Ray Data actor pool, into the
content-addressed Parquet cache. Texts already in the cache cost nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import ray

from mdistill.assets import resolve_model
from mdistill.config import TeacherConfig
from mdistill.resources import inference_plan
from mdistill.teacher.cache import EmbeddingCache, model_fingerprint
from mdistill.teacher.predictor import LogitsPredictor, TeacherPredictor

log = logging.getLogger(__name__)


def local_model_dir(path_or_id: str) -> str:
    """A local directory for fingerprinting: the path itself, or the hub snapshot of an id."""
    if Path(path_or_id).is_dir():
        return path_or_id
    from huggingface_hub import snapshot_download

    return snapshot_download(path_or_id)  # honours HF_HUB_OFFLINE (local HF cache only)


def fill_cache(
    cache: EmbeddingCache,
    texts: Sequence[str],
    predictor: type,
    predictor_kwargs: dict,
    batch_size: int,
    commit_rows: int = 4096,
    num_actors: int | None = None,
) -> int:
    """Run ``predictor`` on a Ray Data actor pool over the texts the cache lacks; returns how many.

    Texts are deduplicated by key and sorted by length, so blocks hold similar lengths and pad
    little. Results stream back to this process and are committed as shards of ``commit_rows``
    (temporary name, then rename): a pass killed midway keeps every committed shard, and the next
    pass computes only the rest. A key that a retried task delivers twice is written once.
    """
    todo = cache.missing(texts)
    if cache.quarantine_corrupt():
        log.warning("cache %s: moved unreadable shards to corrupt/; their texts are recomputed", cache.fingerprint)
    if not todo:
        return 0
    todo.sort(key=len)
    plan = inference_plan(ray.cluster_resources(), max_actors=num_actors)
    ds = ray.data.from_items([{"text": t} for t in todo], override_num_blocks=max(plan.size * 4, len(todo) // batch_size + 1))
    out = ds.map_batches(
        predictor,
        fn_constructor_kwargs={**predictor_kwargs, "threads": plan.threads},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.size),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )
    written: set[str] = set()
    pending: list[pa.Table] = []
    n_pending = 0
    for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        keys = batch.column("key").to_pylist()
        fresh = [i for i, k in enumerate(keys) if k not in written]
        if len(fresh) < len(keys):
            batch = batch.take(pa.array(fresh, pa.int64()))
        written.update(keys)
        pending.append(batch)
        n_pending += batch.num_rows
        if n_pending >= commit_rows:
            cache.write_table(pa.concat_tables(pending))
            pending, n_pending = [], 0
    if pending:
        cache.write_table(pa.concat_tables(pending))
    return len(todo)


def teacher_pass(cfg: TeacherConfig, texts: Sequence[str], cache_dir: Path) -> tuple[EmbeddingCache, dict]:
    """Teacher outputs for every distinct text, computed once: sentence embeddings (pooling and
    normalisation as the model defines them) or, for ``kind: classifier``, raw logits."""
    model = local_model_dir(resolve_model(cfg.model, cache_dir))
    settings = {"kind": cfg.kind, "max_seq_length": cfg.max_seq_length, "dtype": cfg.dtype, "prompt": cfg.prompt, "pooling": "model"}
    fingerprint = model_fingerprint(model, **settings)
    cache = EmbeddingCache(cache_dir / "teacher", fingerprint)
    cache.write_meta(model=cfg.model, model_dir=str(model), **settings)
    unique = list(dict.fromkeys(texts))
    t0 = time.time()
    kwargs = {"model": model, "max_seq_length": cfg.max_seq_length, "batch_size": cfg.batch_size, "prompt": cfg.prompt, "dtype": cfg.dtype}
    predictor = LogitsPredictor if cfg.kind == "classifier" else TeacherPredictor
    computed = fill_cache(cache, unique, predictor, kwargs, cfg.batch_size * 8, num_actors=cfg.num_actors)
    return cache, pass_stats(cache, len(unique), computed, t0)


def pass_stats(cache: EmbeddingCache, distinct: int, computed: int, t0: float) -> dict:
    """What a cached pass did: distinct texts, cache hits, computed, seconds, corrupt shards found."""
    return {
        "fingerprint": cache.fingerprint,
        "distinct_texts": distinct,
        "cache_hits": distinct - computed,
        "computed": computed,
        "seconds": round(time.time() - t0, 2),
        "corrupt_shards": [str(p) for p in cache.corrupt],
    }
