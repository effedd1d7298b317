"""Training stage: what a ``TorchTrainer`` for one student is built from (the recipes build it),
several trainers at once, the resume stamp, and the result read back.

A re-run with the same settings continues a stopped run from its last checkpoint: Ray Train V2
restores a run from the same ``name`` under the same ``storage_path``; ``fresh_or_resume`` keeps
that folder only when what training depends on (the loop config, the training set's content
fingerprint, the initial head's bytes) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train
import torch
from ray.data import ExecutionOptions

from mdistill.config import TrainConfig
from mdistill.report.schema import TrainLogs
from mdistill.resources import train_worker_resources
from mdistill.stages.student import Student, TrainingSet
from mdistill.tracking.spec import WorkerTracking
from mdistill.training import checkpoint as ckpt
from mdistill.training.loop import LoopConfig

SETTINGS_FILE = "mdistill_settings.json"


def save_head(storage: Path, name: str, head: torch.nn.Linear | None) -> str | None:
    """The initial Dense head as safetensors beside the run's folder (a fresh start must not delete it)."""
    if head is None:
        return None
    storage.mkdir(parents=True, exist_ok=True)
    path = storage / f"{name}.head_init.safetensors"
    ckpt.save_linear(path, head)
    return str(path)


def loop_config(
    student: Student,
    ts: TrainingSet,
    train: TrainConfig,
    *,
    seed: int,
    head_path: str | None,
    threads: int,
    tracking: WorkerTracking | None = None,
) -> LoopConfig:
    return LoopConfig(
        student_path=student.path,
        train_layers=student.config.train_layers,
        dropout=student.config.dropout,
        prompt=student.prompt,
        max_seq_length=student.config.max_seq_length,
        head_path=head_path,
        dev_dir=str(ts.dev_dir) if ts.dev_rows else None,
        heldout_dir=str(ts.heldout_dir) if ts.heldout_rows else None,
        train_rows=ts.train_rows,
        threads=threads,
        seed=seed,
        train=train,
        tracking=tracking,
    )


def scaling(train: TrainConfig, concurrent: int = 1) -> tuple[ray.train.ScalingConfig, int]:
    """Workers sized so that ``concurrent`` trainers plus the Ray Data tasks feeding them fit the
    cluster (on 2 CPUs, wrong sizes hang rather than fail); and torch threads per worker."""
    resources, threads = train_worker_resources(ray.nodes(), train.workers, train.use_gpu, concurrent=concurrent)
    config = ray.train.ScalingConfig(
        num_workers=train.workers, use_gpu=train.use_gpu, resources_per_worker=resources, placement_strategy=train.placement_strategy
    )
    return config, threads


# OpenMP threads that wait sleep instead of spinning: several trainers on few cores (the classify
# recipe's five at once) otherwise burn the CPU a busy neighbour needs (docs/recipes/classify.md).
SHARED_CPU_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def run_config(
    name: str, storage: Path, train: TrainConfig, callbacks: list | None = None, worker_env: dict[str, str] | None = None
) -> ray.train.RunConfig:
    return ray.train.RunConfig(
        name=name,
        storage_path=str(storage),
        failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks,
        worker_runtime_env={"env_vars": worker_env} if worker_env else None,
    )


def data_config() -> ray.train.DataConfig:
    """Blocks reach the workers in the same order every epoch and run, so a resumed epoch replays its batches."""
    return ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True))


def fresh_or_resume(run_path: Path, loop: LoopConfig, ts: TrainingSet) -> None:
    """Keep a stopped run's checkpoints (for Ray Train to resume from) only if training would be
    the same: loop settings, training-set content, initial head. Otherwise start afresh."""
    head = hashlib.blake2b(Path(loop.head_path).read_bytes(), digest_size=16).hexdigest() if loop.head_path else None
    wanted = json.dumps({"loop": loop.resume_identity(), "training_set": ts.fingerprint, "head": head}, sort_keys=True, default=str)
    stamp = run_path / SETTINGS_FILE
    if run_path.exists() and (not loop.train.resume or not stamp.exists() or stamp.read_text() != wanted):
        shutil.rmtree(run_path)
    run_path.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted)


@ray.remote(num_cpus=0)
def _fit(trainer) -> ray.train.Result:
    return trainer.fit()


def fit_all(trainers: dict, max_concurrent: int | None = None) -> dict[str, ray.train.Result]:
    """Run several trainers, at most ``max_concurrent`` at once (all when None), in the dict's
    order as slots free up; each ``fit`` runs in its own (CPU-free) Ray task."""
    if len(trainers) == 1:
        ((name, trainer),) = trainers.items()
        return {name: trainer.fit()}
    queue, running, results = list(trainers.items()), {}, {}
    limit = max_concurrent or len(queue)
    while queue or running:
        while queue and len(running) < limit:
            name, trainer = queue.pop(0)
            running[_fit.remote(trainer)] = name
        (done,), _ = ray.wait(list(running), num_returns=1)
        results[running.pop(done)] = ray.get(done)
    return {name: results[name] for name in trainers}


@dataclass
class Trained:
    """A finished training run: its logs and dev vectors; the weights stay in the checkpoint until
    ``weights()`` (the export task reads them, so a full fine-tune's model never enters the driver)."""

    logs: TrainLogs
    dev_vectors: pa.Table | None  # key, embedding: the trained student's vector of every dev row
    checkpoint: ray.train.Checkpoint

    def weights(self) -> dict[str, torch.Tensor]:
        with self.checkpoint.as_directory() as d:
            return ckpt.read_weights(d)


def load_trained(result: ray.train.Result) -> Trained:
    with result.checkpoint.as_directory() as d:
        state = ckpt.read_state(d)
        vectors = Path(d) / ckpt.DEV_VECTORS
        return Trained(state.logs, pq.read_table(vectors) if vectors.exists() else None, result.checkpoint)
