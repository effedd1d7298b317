"""Teacher recipe: embed every distinct text once, on a Ray Data actor pool, into the
content-addressed Parquet cache. Texts already in the cache cost nothing."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import ray

from mdistill.assets import resolve_model
from mdistill.config import TeacherConfig
from mdistill.resources import inference_plan
from mdistill.teacher.cache import EmbeddingCache, model_fingerprint
from mdistill.teacher.predictor import TeacherPredictor


def local_model_dir(path_or_id: str) -> str:
    """A local directory for fingerprinting: the path itself, or the hub snapshot of an id."""
    if Path(path_or_id).is_dir():
        return path_or_id
    from huggingface_hub import snapshot_download

    return snapshot_download(path_or_id)  # honours HF_HUB_OFFLINE (local HF cache only)


def fill_cache(
    cache: EmbeddingCache, texts: Sequence[str], predictor: type, predictor_kwargs: dict, batch_size: int, work_dir: Path
) -> int:
    """Run ``predictor`` on a Ray Data actor pool over the texts the cache lacks; add the shards.

    Returns how many texts were computed. Output files are renamed into the cache only after the
    whole pass has been written, so an interrupted pass leaves no partial shard behind.
    """
    todo = cache.missing(texts)
    if not todo:
        return 0
    plan = inference_plan(ray.cluster_resources())
    ds = ray.data.from_items([{"text": t} for t in todo], override_num_blocks=max(plan.size * 4, len(todo) // 1024 + 1))
    out = ds.map_batches(
        predictor,
        fn_constructor_kwargs={**predictor_kwargs, "threads": plan.threads},
        batch_size=batch_size,  # texts are sorted by length inside the actor: bigger batches pad less
        batch_format="pyarrow",
        concurrency=plan.size,
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )
    tmp = work_dir / f"{cache.fingerprint}.{uuid.uuid4().hex}.tmp"  # private to this pass
    out.write_parquet(str(tmp))
    for f in sorted(tmp.glob("*.parquet")):
        cache.add_shard_file(f)
    shutil.rmtree(tmp, ignore_errors=True)
    return len(todo)


def teacher_pass(cfg: TeacherConfig, texts: Sequence[str], cache_dir: Path, work_dir: Path) -> tuple[EmbeddingCache, dict]:
    model = local_model_dir(resolve_model(cfg.model, cache_dir))
    fingerprint = model_fingerprint(model, max_seq_length=cfg.max_seq_length, dtype=cfg.dtype, prompt=cfg.prompt, pooling="model")
    cache = EmbeddingCache(cache_dir / "teacher", fingerprint)
    unique = list(dict.fromkeys(texts))
    t0 = time.time()
    kwargs = dict(model=model, max_seq_length=cfg.max_seq_length, batch_size=cfg.batch_size, prompt=cfg.prompt, dtype=cfg.dtype)
    computed = fill_cache(cache, unique, TeacherPredictor, kwargs, cfg.batch_size * 8, work_dir)
    stats = {
        "fingerprint": fingerprint,
        "distinct_texts": len(unique),
        "cache_hits": len(unique) - computed,
        "computed": computed,
        "seconds": round(time.time() - t0, 2),
        "corrupt_shards": [str(p) for p in cache.corrupt],
    }
    return cache, stats
