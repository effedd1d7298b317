"""The Ray Train worker loop of the static student: ``setup`` -> ``resume`` -> ``train_epoch``
(repeated) -> ``save_and_report``, like ``training/classify_loop.py``.

Rows come from ``ray.train.get_dataset_shard("train")``: ``text`` and ``target`` (the teacher's
cached vector of its English source). The kernels are ``training.static_step`` (no Ray). DDP on
gloo; the ``EmbeddingBag``'s gradients are dense, so every rank averages the whole (trimmed)
table each step. Checkpoints (safetensors + JSON, nothing pickled) at every epoch end; the final
one also holds the trained model in model2vec format (``model/``: what the recipe exports).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from mdistill.config import TrainConfig
from mdistill.log import get_logger
from mdistill.report.schema import EpochRecord, StepRecord, TrainLogs
from mdistill.tracking.spec import WorkerTracking
from mdistill.training import checkpoint as ckpt

log = get_logger("train")

MODEL_DIR = "model"


class StaticLoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    init_path: str  # the distilled static model with corpus SIF weights (model2vec format)
    train_rows: int
    threads: int
    seed: int
    train: TrainConfig
    tracking: WorkerTracking | None = None  # the run's experiment trackers: rank 0 logs each step's metrics there


def static_loop_per_worker(config: dict) -> None:
    StaticLoop(StaticLoopConfig.model_validate(config["loop"])).run()


class StaticLoop:
    def __init__(self, cfg: StaticLoopConfig):
        import ray.train

        self.cfg, self.t = cfg, cfg.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.micro, self.logs = 0, TrainLogs()

    def setup(self) -> None:
        import ray.train.torch
        from model2vec import StaticModel

        from mdistill.losses import embedding_loss
        from mdistill.tracking.worker import StepLogger
        from mdistill.training import static_step

        cfg, t = self.cfg, self.t
        self.tracker = StepLogger(cfg.tracking, self.rank)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.loss_fn = embedding_loss(t.loss, contrastive_weight=t.contrastive_weight, contrastive_temperature=t.contrastive_temperature)
        self.per_epoch = -(-(cfg.train_rows // self.world) // t.batch_size)  # ceil: the last batch may be short
        if self.per_epoch == 0:
            raise ValueError(f"static: {cfg.train_rows} training rows for {self.world} workers: no batch")
        self.total = self.per_epoch * t.epochs if t.max_steps is None else min(self.per_epoch * t.epochs, t.max_steps)
        self.student = static_step.trainable(StaticModel.from_pretrained(cfg.init_path))
        self.optimizer, self.scheduler = static_step.make_optimizer(
            self.student, lr=t.lr, total_steps=self.total, warmup_ratio=t.warmup_ratio
        )
        self.model = ray.train.torch.prepare_model(self.student, move_to_device=False)  # DDP over gloo
        if self.rank == 0:
            log.info("static: %d pieces x %d dims, %d steps", *self.student.embeddings.weight.shape, self.total)

    def resume(self) -> None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return
        with checkpoint.as_directory() as d:
            state = ckpt.read_state(d)
            self.student.load_state_dict(ckpt.read_weights(d))
            ckpt.read_optimizer(d, self.optimizer, self.scheduler)
        self.micro, self.logs = state.micro, state.logs
        self.logs.resumed_at.append(self.micro)
        if self.rank == 0:
            log.info("static: resumed at step %d/%d from %s", self.micro, self.total, checkpoint.path)

    def train_epoch(self, epoch: int) -> None:
        import ray.train

        from mdistill.teacher.cache import embedding_matrix
        from mdistill.training.static_step import static_loss

        t, start = self.t, epoch * self.per_epoch
        losses, seen, t0 = [], 0, time.time()
        rng = random.Random(f"{self.cfg.seed}-{self.rank}-{epoch}")
        shard = ray.train.get_dataset_shard("train")
        # every rank takes exactly per_epoch batches (an equal split can still differ by a row)
        batches = shard.iter_batches(batch_size=t.batch_size, batch_format="pyarrow", local_shuffle_buffer_size=4 * t.batch_size,
                                     local_shuffle_seed=rng.randrange(1 << 30))  # fmt: skip
        for i, batch in enumerate(batches):
            if i >= self.per_epoch or self.micro >= self.total:
                break
            if start + i < self.micro:
                continue  # done before the restart
            targets = torch.as_tensor(np.array(embedding_matrix(batch.column("target"))), dtype=torch.float32)
            self.student.train()
            value = static_loss(self.model, batch.column("text").to_pylist(), targets, self.loss_fn)
            value.backward()
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), t.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.micro += 1
            losses.append(float(value.detach()))
            seen += batch.num_rows
            if self.micro % t.log_every == 0:
                recent = losses[-t.log_every :]
                self.logs.steps.append(
                    StepRecord(step=self.micro, epoch=epoch + 1, loss=sum(recent) / len(recent), lr=self.scheduler.get_last_lr()[0])
                )
                self.tracker.log({"loss": self.logs.steps[-1].loss, "lr": self.logs.steps[-1].lr}, self.micro)
                if self.rank == 0:
                    log.info(
                        "static epoch %d/%d step %d/%d loss %.5f", epoch + 1, t.epochs, self.micro, self.total, self.logs.steps[-1].loss
                    )
        if self.micro < min(self.total, start + self.per_epoch):
            raise RuntimeError(
                f"rank {self.rank}: the train shard gave {self.micro - start} batches in epoch {epoch + 1}, expected {self.per_epoch}"
            )
        elapsed = time.time() - t0
        rec = EpochRecord(
            epoch=epoch + 1, step=self.micro, loss=sum(losses) / max(1, len(losses)), elapsed_s=elapsed,
            samples_per_s=seen * self.world / max(1e-9, elapsed), first_batch_s=0.0, loss_fn=type(self.loss_fn).__name__,
        )  # fmt: skip
        self.logs.history.append(rec)
        self.tracker.log({"epoch": epoch + 1, "samples_per_s": rec.samples_per_s}, self.micro)
        self.save_and_report(rec.model_dump(), final=self.micro >= self.total)

    def save_and_report(self, metrics: dict, final: bool) -> None:
        """Rank 0 writes the checkpoint (DDP keeps full weights on every rank), a barrier, every rank reports."""
        import ray.train

        from mdistill.training.static_step import to_static

        with tempfile.TemporaryDirectory() as d:
            if self.rank == 0:
                ckpt.write_weights(d, self.student.state_dict())
                ckpt.write_state(d, ckpt.TrainState(micro=self.micro, final=final, logs=self.logs))
                ckpt.write_optimizer(d, self.optimizer, self.scheduler)
                if final:
                    to_static(self.student).save_pretrained(str(Path(d) / MODEL_DIR))
            if self.world > 1:
                torch.distributed.barrier()
            ray.train.report(
                {**metrics, "micro": self.micro}, checkpoint=ray.train.Checkpoint.from_directory(d) if self.rank == 0 else None
            )

    def run(self) -> None:
        self.setup()
        self.resume()
        if self.micro >= self.total:  # a finished run re-run: report its final checkpoint again
            last = self.logs.history[-1] if self.logs.history else None
            self.save_and_report(last.model_dump() if last else {}, final=True)
            return
        for epoch in range(self.micro // self.per_epoch, self.t.epochs):
            if self.micro >= self.total:
                break
            self.train_epoch(epoch)
