"""Student recipe: cache the frozen student's bottom once, then train its top on Ray Train.

1. ``map_batches(BottomStatesPredictor)`` runs the student once over every training and dev
   sentence: layer-k hidden states (what training starts from) and the frozen student's own
   embedding (the untrained and linear-map baselines).
2. ``TorchTrainer`` streams those states with their teacher vectors (``get_dataset_shard``) and
   trains the top layers + Dense head with the Reimers & Gurevych MSE loss: DDP or DeepSpeed
   ZeRO, checkpoints, ``FailureConfig`` restarts. Several students train at once (``fit_all``).
"""

from __future__ import annotations

import json
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

from mdistill.config import StudentConfig, TrainConfig
from mdistill.pipelines.teacher import fill_cache, pass_stats
from mdistill.resources import train_worker_resources
from mdistill.teacher.cache import EmbeddingCache, model_fingerprint, text_key
from mdistill.teacher.predictor import BottomStatesPredictor
from mdistill.training.loop import CKPT_FILE, train_loop_per_worker


def frozen_states_pass(
    student: StudentConfig, batch_size: int, student_path: str, rows: pa.Table, prompt: str, cache_dir: Path, out_dir: Path
) -> tuple[Path, dict]:
    """Write ``rows`` + the frozen student's states as Parquet under ``out_dir``.

    The states are cached like teacher vectors, keyed by (student fingerprint, text hash): a
    re-run computes only sentences it has not seen.
    """
    frozen_layers = num_layers(student_path) - student.train_layers
    fingerprint = model_fingerprint(
        student_path, role="student-bottom", frozen_layers=frozen_layers, max_seq_length=student.max_seq_length, prompt=prompt
    )
    cache = EmbeddingCache(cache_dir / "student_states", fingerprint)
    cache.write_meta(
        model=student_path, kind="student_states", frozen_layers=frozen_layers, max_seq_length=student.max_seq_length, prompt=prompt
    )
    texts = list(dict.fromkeys(rows.column("text").to_pylist()))
    t0 = time.time()
    kwargs = dict(
        model=student_path,
        frozen_layers=frozen_layers,
        max_seq_length=student.max_seq_length,
        batch_size=batch_size,
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
    name: str,
    student: StudentConfig,
    train: TrainConfig,
    *,
    seed: int,
    student_path: str,
    states_dir: Path,
    train_rows: int,
    dense: torch.nn.Linear | str | None,
    run_dir: Path,
    concurrent: int = 1,
    max_dev_rows: int = 2000,
    callbacks: list | None = None,
) -> TorchTrainer:
    """A ``TorchTrainer`` for one student: DDP or DeepSpeed ZeRO, checkpoints, automatic resume.

    ``concurrent`` trainers share the cluster: the workers' CPU share is sized so that all of
    them plus the Ray Data tasks feeding them fit (on 2 CPUs, wrong sizes hang rather than fail).
    ``dense``: the head to start from, or the path of one already saved (Tune trials share one).
    ``callbacks``: Ray Train callbacks (Tune's report callback).
    """
    train_ds = (
        ray.data.read_parquet(str(states_dir), columns=["split", "hidden", "length", "dim", "target"])
        .filter(expr=col("split") == "train")
        .drop_columns(["split"])
    )
    # The dev sample is small and every rank needs all of it: one object in the object store, not
    # a dataset that every worker would execute again.
    dev = pq.read_table(states_dir, columns=["en", "lang", "hidden", "length", "dim", "target"], filters=[("split", "=", "dev")])
    dev_ref = ray.put(dev.slice(0, max_dev_rows)) if dev.num_rows else None
    storage = (run_dir / "ray_train").resolve()
    dense_path = dense if isinstance(dense, str) else None
    if isinstance(dense, torch.nn.Linear):
        dense_path = run_dir / f"{name}.dense_init.pt"
        torch.save(dense, dense_path)
    resources, threads = train_worker_resources(ray.cluster_resources(), train.workers, train.use_gpu, concurrent=concurrent)
    loop_config = dict(
        student_path=student_path,
        dense_path=str(dense_path) if dense_path else None,
        train_layers=student.train_layers,
        dropout=student.dropout,
        train_rows=train_rows,  # known to the caller; counting the dataset would read it all once more
        threads=threads,
        seed=seed,
        **train.model_dump(include=_LOOP_KEYS),
    )
    fresh_or_resume(storage / name, {**loop_config, "threads": None, "states": _files_identity(states_dir)}, train.resume)
    loop_config["dev"] = dev_ref
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=train.workers, use_gpu=train.use_gpu, resources_per_worker=resources),
        datasets={"train": train_ds},
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


_LOOP_KEYS = {
    "strategy", "zero_stage", "grad_accum", "epochs", "loss", "batch_size", "lr", "head_lr", "warmup_ratio",
    "weight_decay", "max_grad_norm", "bucket_rows", "log_every", "checkpoint_every", "dev_every",
}  # fmt: skip


def fresh_or_resume(run_path: Path, settings: dict, resume: bool) -> None:
    """Keep a stopped run's checkpoints for Ray Train to resume from (same name and
    storage_path) only when its settings were the same; otherwise start afresh."""
    stamp = run_path / "mdistill_settings.json"
    wanted = json.dumps(settings, sort_keys=True, default=str)
    if run_path.exists() and (not resume or not stamp.exists() or stamp.read_text() != wanted):
        shutil.rmtree(run_path)
    run_path.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted)


def _files_identity(folder: Path) -> list:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).glob("*.parquet"))


@ray.remote(num_cpus=0)
def _fit(trainer: TorchTrainer) -> ray.train.Result:
    return trainer.fit()


def fit_all(trainers: dict[str, TorchTrainer]) -> dict[str, ray.train.Result]:
    """Run several trainers at once; each ``fit`` runs in its own (CPU-free) Ray task."""
    if len(trainers) == 1:
        ((name, trainer),) = trainers.items()
        return {name: trainer.fit()}
    refs = {name: _fit.remote(t) for name, t in trainers.items()}
    return dict(zip(refs, ray.get(list(refs.values()))))


def load_trained(result: ray.train.Result) -> dict:
    """The final checkpoint's weights and training logs."""
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / CKPT_FILE, weights_only=False)
