"""Teacher stage: the teacher's cache (fingerprint = every file of the model + the settings that
change its outputs) and the actor that computes what the cache lacks.

The pass itself is ``stages.cache_pass`` with ``TeacherPredictor`` (sentence embeddings, pooled
and normalised as the model defines them) or, for ``kind: classifier``, ``LogitsPredictor`` (raw
logits), on a Ray Data actor pool the recipe starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mdistill.assets import resolve_model
from mdistill.config import TeacherConfig
from mdistill.resources import Nodes
from mdistill.stages.cache_pass import pool_args
from mdistill.teacher.cache import EmbeddingCache, model_fingerprint
from mdistill.teacher.predictor import LogitsPredictor, TeacherPredictor


def local_model_dir(path_or_id: str) -> str:
    """A local directory for fingerprinting: the path itself, or the hub snapshot of an id."""
    if Path(path_or_id).is_dir():
        return path_or_id
    from huggingface_hub import snapshot_download

    return snapshot_download(path_or_id)  # honours HF_HUB_OFFLINE (local HF cache only)


@dataclass(frozen=True)
class Teacher:
    cache: EmbeddingCache
    model_dir: str
    predictor: type  # a map_batches callable class (teacher.predictor)
    kwargs: dict  # its constructor arguments, but threads
    batch_rows: int  # rows per map_batches call (the actor batches them again by token count)
    num_actors: int | None = None  # None: one per GPU, or CPU actors sized to the machine

    def pool_args(self, nodes: Nodes) -> dict:
        return pool_args(self.kwargs, self.batch_rows, nodes, self.num_actors)


def teacher_settings(cfg: TeacherConfig) -> dict:
    """The settings the teacher cache is keyed by, with the model's files."""
    settings = {"kind": cfg.kind, "max_seq_length": cfg.max_seq_length, "dtype": cfg.dtype, "prompt": cfg.prompt, "pooling": "model"}
    return settings | ({"cpu_bf16": True} if cfg.cpu_bf16 else {})  # only when on: the float32 caches keep their fingerprints


def open_teacher(cfg: TeacherConfig, cache_dir: Path) -> Teacher:
    model = local_model_dir(resolve_model(cfg.model, cache_dir))
    settings = teacher_settings(cfg)
    cache = EmbeddingCache(cache_dir / "teacher", model_fingerprint(model, **settings))
    cache.write_meta(model=cfg.model, model_dir=str(model), **settings)
    kwargs = {"model": model, "max_seq_length": cfg.max_seq_length, "batch_size": cfg.batch_size, "prompt": cfg.prompt, "dtype": cfg.dtype}
    predictor = LogitsPredictor if cfg.kind == "classifier" else TeacherPredictor
    if cfg.kind == "classifier":
        kwargs["cpu_bf16"] = cfg.cpu_bf16
    return Teacher(cache, model, predictor, kwargs, cfg.batch_size * 8, cfg.num_actors)
