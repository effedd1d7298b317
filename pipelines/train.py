"""Student recipe: cache the frozen student's bottom once, then train its top on Ray Train.

1. ``map_batches(BottomStatesPredictor)`` runs the student once over every training and dev
   sentence: layer-k hidden states (what training starts from) and the frozen student's own
   embedding (the untrained and linear-map baselines).
2. ``TorchTrainer`` streams those states with their teacher vectors (``get_dataset_shard``) and
   trains the top layers + Dense head with the Reimers & Gurevych MSE loss.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train
import torch
from ray.data.expressions import col
from ray.train.torch import TorchTrainer

from mdistill.config import RunConfig
from mdistill.pipelines.teacher import fill_cache, pass_stats
from mdistill.resources import train_worker_resources
from mdistill.teacher.cache import EmbeddingCache, model_fingerprint, text_key
from mdistill.teacher.predictor import BottomStatesPredictor
from mdistill.training.loop import train_loop_per_worker


def frozen_states_pass(cfg: RunConfig, student_path: str, rows: pa.Table, prompt: str, cache_dir: Path, out_dir: Path) -> tuple[Path, dict]:
    """Write ``rows`` + the frozen student's states as Parquet under ``out_dir``.

    The states are cached like teacher vectors, keyed by (student fingerprint, text hash): a
    re-run computes only sentences it has not seen.
    """
    frozen_layers = num_layers(student_path) - cfg.student.train_layers
    fingerprint = model_fingerprint(
        student_path, role="student-bottom", frozen_layers=frozen_layers, max_seq_length=cfg.student.max_seq_length, prompt=prompt
    )
    cache = EmbeddingCache(cache_dir / "student_states", fingerprint)
    cache.write_meta(
        model=student_path, kind="student_states", frozen_layers=frozen_layers, max_seq_length=cfg.student.max_seq_length, prompt=prompt
    )
    texts = list(dict.fromkeys(rows.column("text").to_pylist()))
    t0 = time.time()
    kwargs = dict(
        model=student_path,
        frozen_layers=frozen_layers,
        max_seq_length=cfg.student.max_seq_length,
        batch_size=cfg.eval.batch_size,
        prompt=prompt,
    )
    computed = fill_cache(cache, texts, BottomStatesPredictor, kwargs, 512, commit_rows=1024)  # ~50 KB of states a row

    # Each row gets its sentence's states; files of 2,048 rows stream to the trainers.
    cached = cache.read_table(texts, ["hidden", "length", "dim", "pooled"])
    position = {k: i for i, k in enumerate(cached.column("key").to_pylist())}
    take = pa.array([position[text_key(t)] for t in rows.column("text").to_pylist()])
    joined = rows
    for name in ("hidden", "length", "dim", "pooled"):
        joined = joined.append_column(name, cached.column(name).take(take))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    for i, start in enumerate(range(0, joined.num_rows, 2048)):
        pq.write_table(joined.slice(start, 2048), out_dir / f"part-{i:05d}.parquet")
    return out_dir, pass_stats(cache, len(texts), computed, t0)


def num_layers(student_path: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(student_path).num_hidden_layers


def train_student(
    cfg: RunConfig, student_path: str, states_dir: Path, train_rows: int, dense: torch.nn.Linear | None, run_dir: Path
) -> ray.train.Result:
    train_ds = (
        ray.data.read_parquet(str(states_dir), columns=["split", "hidden", "length", "dim", "target"])
        .filter(expr=col("split") == "train")
        .drop_columns(["split"])
    )
    dense_path = None
    if dense is not None:
        dense_path = run_dir / "dense_init.pt"
        torch.save(dense, dense_path)
    resources, threads = train_worker_resources(ray.cluster_resources(), cfg.train.workers, cfg.train.use_gpu)
    t = cfg.train
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dict(
            student_path=student_path,
            dense_path=str(dense_path) if dense_path else None,
            train_layers=cfg.student.train_layers,
            dropout=cfg.student.dropout,
            train_rows=train_rows,  # known to the caller; counting the dataset would read it all once more
            threads=threads,
            seed=cfg.seed,
            epochs=t.epochs,
            loss=t.loss,
            batch_size=t.batch_size,
            lr=t.lr,
            head_lr=t.head_lr,
            warmup_ratio=t.warmup_ratio,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            bucket_rows=t.bucket_rows,
            log_every=t.log_every,
        ),
        scaling_config=ray.train.ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        datasets={"train": train_ds},
        run_config=ray.train.RunConfig(name="train", storage_path=str((run_dir / "ray_train").resolve())),
    )
    return trainer.fit()
