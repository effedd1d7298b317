"""The Ray Train worker loop of a classifier (teacher or student), the torchtune way: ``setup`` ->
``resume`` -> ``train_epoch`` (repeated) -> ``save_and_report``.

Rows come from ``ray.train.get_dataset_shard("train")``: ``text``, ``en`` (its English source),
``label_id`` and, for ``soft`` / ``hard``, ``logits`` (the teacher's cached logits of the English
source). The kernels are ``training.classify_step`` (they run without Ray). DDP on gloo (CPU) or
nccl (GPU, bf16 autocast). ``online`` trains a second model, the teacher, on the English source of
every row in the same step (deep mutual learning); its logits are computed in the loop, never
cached: each step pays a teacher forward and backward, and the teacher the student follows is the
one of that step, not a finished one.

Checkpoints (safetensors + JSON, nothing pickled) at every epoch end, through
``ray.train.report(checkpoint=...)``: a restarted worker group resumes at the last epoch end. The
final checkpoint holds the trained model as a Hugging Face directory (``model/``: what the recipe
exports) and the logits of every evaluation row (``eval_logits.parquet``, in row order).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict

from mdistill.config import TrainConfig
from mdistill.encode import bf16_autocast
from mdistill.log import get_logger
from mdistill.report.schema import EpochRecord, StepRecord, TrainLogs
from mdistill.tracking.spec import WorkerTracking
from mdistill.training import checkpoint as ckpt

log = get_logger("train")

MODEL_DIR = "model"  # in the final checkpoint: the trained classifier, loadable by AutoModelForSequenceClassification
TEACHER_DIR = "online_teacher"  # online mode: the teacher trained beside the student
EVAL_LOGITS = "eval_logits.parquet"  # logits of every evaluation row, in the order of the eval table
TEACHER_WEIGHTS = "teacher.safetensors"


class ClassifyLoopConfig(BaseModel):
    """Everything a worker needs, validated in the driver before any compute and again in the worker."""

    model_config = ConfigDict(extra="forbid")

    name: str  # the run's role: teacher, zero_shot, translate_train, soft, hard, online
    mode: Literal["supervised", "soft", "hard", "online"]
    model_path: str  # encoder (sentence-transformers or HF directory) the classifier starts from
    labels: list[str]
    train_layers: int | Literal["all"]
    pooling: Literal["mean", "cls"] = "cls"  # classify.pooling: mean appends the mean-pooling layer (models/mean_pooling_layer.py)
    prompt: str
    max_seq_length: int
    head_lr: float | None
    teacher_path: str | None = None  # online: the teacher's encoder, trained in the loop on the English sources
    teacher_train_layers: int | Literal["all"] = "all"
    teacher_max_seq_length: int = 128
    # Cached student states (``stages.classify.frozen_pass``): rows carry ``hidden`` / ``length`` / ``dim``
    # (the states after the frozen layers) instead of being tokenised, and each step runs only the top layers.
    states: bool = False
    eval_path: str | None  # Parquet (file or folder) of the rows to predict at the end (text or states, and row); None: no evaluation
    dev_path: str | None = None  # Parquet (text or states, label_id): scored every train.dev_every steps and at each epoch end
    train_rows: int
    threads: int
    seed: int
    train: TrainConfig
    tracking: WorkerTracking | None = None  # the run's experiment trackers: rank 0 logs each step's metrics there


def classify_loop_per_worker(config: dict) -> None:
    ClassifyLoop(ClassifyLoopConfig.model_validate(config["loop"])).run()


class ClassifyLoop:
    def __init__(self, cfg: ClassifyLoopConfig):
        import ray.train

        self.cfg, self.t = cfg, cfg.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.micro, self.logs = 0, TrainLogs()
        self.teacher = self.teacher_model = self.teacher_optimizer = self.teacher_scheduler = None

    # -- setup ----------------------------------------------------------------------------------

    def _build(self, path: str, train_layers, lr: float, total_steps: int):
        from transformers import AutoTokenizer

        from mdistill.training.classify_step import ClassifierStudent, make_classifier_optimizer

        model = ClassifierStudent.from_pretrained(path, self.cfg.labels, pooling=self.cfg.pooling)
        trainable = model.freeze_below(train_layers)
        optimizer, scheduler = make_classifier_optimizer(
            model,
            lr=lr,
            head_lr=self.cfg.head_lr,
            weight_decay=self.t.weight_decay,
            total_steps=total_steps,
            warmup_ratio=self.t.warmup_ratio,
        )
        return model, AutoTokenizer.from_pretrained(path), optimizer, scheduler, trainable

    def setup(self) -> None:
        import ray.train.torch

        from mdistill.tracking.worker import StepLogger
        from mdistill.training.step import StateFeatures, TextFeatures, steps_per_epoch

        cfg, t = self.cfg, self.t
        self.tracker = StepLogger(cfg.tracking, self.rank)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = ray.train.torch.get_device()
        self.micro_per_epoch = steps_per_epoch(cfg.train_rows // self.world, t.batch_size, t.bucket_rows)
        self.total_micro = self.micro_per_epoch * t.epochs
        if t.max_steps is not None:
            self.total_micro = min(self.total_micro, t.max_steps)
        if self.micro_per_epoch == 0:
            raise ValueError(f"{cfg.name}: {cfg.train_rows} training rows for {self.world} workers: no batch")
        self.student, self.tokenizer, self.optimizer, self.scheduler, trainable = self._build(
            cfg.model_path, cfg.train_layers, t.lr, self.total_micro
        )
        self.model = ray.train.torch.prepare_model(self.student)  # DDP; moves to this worker's GPU when use_gpu
        self.features = StateFeatures() if cfg.states else TextFeatures(self.tokenizer, cfg.prompt, cfg.max_seq_length)
        self.teacher_features = None
        if cfg.mode == "online":
            if cfg.teacher_path is None:
                raise ValueError("online mode needs teacher_path")
            self.teacher, self.teacher_tokenizer, self.teacher_optimizer, self.teacher_scheduler, _ = self._build(
                cfg.teacher_path, cfg.teacher_train_layers, t.lr, self.total_micro
            )
            self.teacher_model = ray.train.torch.prepare_model(self.teacher)
            self.teacher_features = TextFeatures(self.teacher_tokenizer, "", cfg.teacher_max_seq_length)
        self.autocast = bf16_autocast(self.device, t.cpu_bf16)  # bf16 on GPU; on CPU with train.cpu_bf16 and native bf16
        if self.rank == 0:
            log.info("%s: %s, %d trainable parameters, %d micro-batches", cfg.name, cfg.mode, trainable, self.total_micro)

    # -- resume ---------------------------------------------------------------------------------

    def resume(self) -> None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return
        with checkpoint.as_directory() as d:
            state = ckpt.read_state(d)
            self.student.load_state_dict(ckpt.read_weights(d))
            ckpt.read_optimizer(d, self.optimizer, self.scheduler)
            if self.teacher is not None:
                from safetensors.torch import load_file

                self.teacher.load_state_dict(load_file(os.path.join(d, TEACHER_WEIGHTS)))
        self.micro, self.logs = state.micro, state.logs
        self.logs.resumed_at.append(self.micro)
        if self.rank == 0:
            log.info("%s: resumed at step %d/%d from %s", self.cfg.name, self.micro, self.total_micro, checkpoint.path)

    # -- one epoch ------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> None:
        import ray.train

        from mdistill.training.classify_step import classify_batches, classify_train_step

        cfg, t = self.cfg, self.t
        start = epoch * self.micro_per_epoch
        skip = self.micro - start
        rng = random.Random(f"{cfg.seed}-{self.rank}-{epoch}")  # the same batch order when an epoch is replayed
        chunks = ray.train.get_dataset_shard("train").iter_batches(batch_size=t.bucket_rows, batch_format="pyarrow")
        batches = classify_batches(
            chunks, t.batch_size, rng, self.features,
            logits_column="logits" if cfg.mode in ("soft", "hard") else None,
            teacher_features=self.teacher_features, teacher_text_column="en",
        )  # fmt: skip
        losses: list[float] = []
        seen, t0 = 0, time.time()
        for i, batch in enumerate(batches):
            if self.micro >= self.total_micro:
                break  # train.max_steps reached mid-epoch (every rank stops at the same step)
            if i < skip or self.micro >= start + self.micro_per_epoch:
                continue  # done before the restart / a surplus batch
            batch = batch.to(self.device)
            with self.autocast:
                out = classify_train_step(
                    self.model, self.optimizer, self.scheduler, batch, cfg.mode, t.temperature, t.alpha,
                    self.teacher_model, self.teacher_optimizer, teacher_scheduler=self.teacher_scheduler,
                    max_grad_norm=t.max_grad_norm,
                )  # fmt: skip
            self.micro += 1
            losses.append(out["loss"])
            seen += len(batch.labels)
            if t.dev_every is not None and self.micro % t.dev_every == 0 and self.micro % self.micro_per_epoch != 0:
                ray.train.report({"epoch": epoch + 1, "step": self.micro, "loss": sum(losses) / len(losses), **self.dev_metrics()})
            if self.micro % t.log_every == 0:
                recent = losses[-t.log_every :]
                lr = self.scheduler.get_last_lr()[0]
                self.logs.steps.append(StepRecord(step=self.micro, epoch=epoch + 1, loss=sum(recent) / len(recent), lr=lr))
                self.tracker.log({"loss": self.logs.steps[-1].loss, "lr": lr}, self.micro)
                if self.rank == 0:
                    rate = seen * self.world / max(1e-9, time.time() - t0)
                    log.info(
                        "%s epoch %d/%d step %d/%d loss %.4f lr %.2e %.0f samples/s",
                        cfg.name,
                        epoch + 1,
                        t.epochs,
                        self.micro,
                        self.total_micro,
                        self.logs.steps[-1].loss,
                        lr,
                        rate,
                    )
        if self.micro < min(self.total_micro, start + self.micro_per_epoch):
            raise RuntimeError(
                f"rank {self.rank}: the train shard gave {self.micro - start} batches in epoch {epoch + 1}, expected {self.micro_per_epoch}"
            )
        elapsed = time.time() - t0
        rec = EpochRecord(
            epoch=epoch + 1, step=self.micro, loss=sum(losses) / max(1, len(losses)), elapsed_s=elapsed,
            samples_per_s=seen * self.world / max(1e-9, elapsed), first_batch_s=0.0, loss_fn=cfg.mode,
        )  # fmt: skip
        self.logs.history.append(rec)
        self.tracker.log({"epoch": epoch + 1, "samples_per_s": rec.samples_per_s}, self.micro)
        self.save_and_report(rec.model_dump() | self.dev_metrics(), final=self.micro >= self.total_micro)

    # -- save and report ------------------------------------------------------------------------

    def _predict(self, path: str) -> tuple[pa.Table, np.ndarray]:
        """Logits of the rows of a Parquet file or folder (text, or cached states), with the rows' other columns."""
        from mdistill.training.classify_step import predict_logits, predict_state_logits

        if self.cfg.states:
            rows = pq.read_table(path)
            logits = predict_state_logits(self.student, rows.to_batches(max_chunksize=1024))
            return rows.drop_columns(["hidden", "length", "dim"]), logits
        rows = pq.read_table(path)
        logits = predict_logits(
            self.student, rows.column("text").to_pylist(), self.tokenizer, batch_size=64,
            max_seq_length=self.cfg.max_seq_length, prompt=self.cfg.prompt,
        )  # fmt: skip
        return rows, logits

    def dev_metrics(self) -> dict[str, float]:
        """``dev_accuracy`` / ``dev_macro_f1`` over every language's dev rows pooled (what Tune
        ranks trials by), computed on every rank (each reports the same numbers)."""
        from mdistill.evaluation.ClassificationEvaluator import ClassificationEvaluator

        if self.cfg.dev_path is None:
            return {}
        rows, logits = self._predict(self.cfg.dev_path)
        m = ClassificationEvaluator.compute(logits, rows.column("label_id").to_numpy())
        self.logs.dev_accuracy.append((self.micro, m["accuracy"]))
        out = {"dev_accuracy": m["accuracy"], "dev_macro_f1": m["macro_f1"]}
        self.tracker.log(out, self.micro)
        return out

    def eval_logits(self) -> pa.Table | None:
        if self.cfg.eval_path is None:
            return None
        rows, logits = self._predict(self.cfg.eval_path)
        order = rows.column("row") if "row" in rows.column_names else pa.array(range(rows.num_rows), pa.int64())
        return pa.table(
            {"row": order.cast(pa.int64()), "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1])}
        )

    def save_and_report(self, metrics: dict, final: bool) -> None:
        """Rank 0 writes the checkpoint (DDP keeps full weights on every rank), a barrier, every rank reports."""
        import ray.train
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as d:
            if self.rank == 0:
                ckpt.write_weights(d, {k: v.detach().cpu().contiguous() for k, v in self.student.state_dict().items()})
                ckpt.write_state(d, ckpt.TrainState(micro=self.micro, final=final, logs=self.logs))
                ckpt.write_optimizer(d, self.optimizer, self.scheduler)
                if self.teacher is not None:
                    save_file(
                        {k: v.detach().cpu().contiguous() for k, v in self.teacher.state_dict().items()}, os.path.join(d, TEACHER_WEIGHTS)
                    )
                if final:
                    self.student.save(os.path.join(d, MODEL_DIR), self.tokenizer)
                    if self.teacher is not None:
                        self.teacher.save(os.path.join(d, TEACHER_DIR), self.teacher_tokenizer)
                    logits = self.eval_logits()
                    if logits is not None:
                        pq.write_table(logits, os.path.join(d, EVAL_LOGITS))
            if self.world > 1:
                torch.distributed.barrier()
            ray.train.report(
                {**metrics, "micro": self.micro}, checkpoint=ray.train.Checkpoint.from_directory(d) if self.rank == 0 else None
            )

    # -- the whole loop -------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        self.resume()
        if self.micro >= self.total_micro:  # a finished run re-run: report its final checkpoint again
            last = self.logs.history[-1] if self.logs.history else None
            self.save_and_report(last.model_dump() if last else {}, final=True)
            return
        for epoch in range(self.micro // self.micro_per_epoch, self.t.epochs):
            if self.micro >= self.total_micro:
                break
            self.train_epoch(epoch)
