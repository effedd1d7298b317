"""The Ray Train worker loop, split the torchtune way: ``setup`` -> ``resume`` -> ``train_epoch``
(repeated) -> ``save_and_report``.

The student trains on rows of its training set (``stages.student.TrainingSet``), streamed from
``ray.train.get_dataset_shard("train")``: cached frozen-bottom states (``TopStudent``, the top
``train_layers`` layers and the Dense head train) or tokenised text (``FullStudent``: a full
fine-tune, ``student.train_layers: all``), each with the teacher's vector of its English source
as the target (Reimers & Gurevych 2020).

Strategies: DDP (``prepare_model``) or DeepSpeed ZeRO 1/2/3 (``deepspeed.initialize`` on the
process group Ray Train set up: gloo on CPU, nccl with bf16 on GPU). Checkpoints
(``training.checkpoint``: safetensors + JSON, nothing pickled) every ``checkpoint_every``
optimizer steps through ``ray.train.report(checkpoint=...)``; a restarted worker group
(``FailureConfig``) or a re-run of a stopped run resumes from the latest one and replays that
epoch's batch order.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from contextlib import nullcontext
from typing import Literal

import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict

from mdistill.config import TrainConfig
from mdistill.log import get_logger
from mdistill.report.schema import DevRecord, EpochRecord, StepRecord, TrainLogs
from mdistill.tracking.spec import WorkerTracking
from mdistill.training import checkpoint as ckpt

log = get_logger("train")


class IntermediateSpec(BaseModel):
    """Intermediate-layer distillation (the compression recipe): the teacher runs in the loop."""

    model_config = ConfigDict(extra="forbid")

    teacher_path: str  # a sentence-transformers directory whose tokenizer holds every student piece
    hidden_weight: float
    attention_weight: float
    relation_heads: int
    layer_map: dict[int, int] | None  # student -> teacher hidden_states index; None: uniform


class LoopConfig(BaseModel):
    """Everything a worker needs, validated in the driver before any compute and again in the worker."""

    model_config = ConfigDict(extra="forbid")

    student_path: str  # the built student (a sentence-transformers directory)
    train_layers: int | Literal["all"]
    dropout: float
    prompt: str  # text mode: prepended before tokenising (the exported model's default prompt)
    max_seq_length: int
    head_path: str | None  # safetensors of the Dense head to start from (None: no head)
    dev_dir: str | None  # Parquet rows of the dev split (every rank reads them: ZeRO-3 forwards are collective)
    heldout_dir: str | None = None  # Parquet rows of the out-of-domain split (corpus.heldout_sources)
    max_dev_rows: int = 2000  # rows of each pooled metric during training (the final vectors cover every row)
    train_rows: int  # known to the driver; counting the dataset would read it all once more
    threads: int  # torch threads per worker (a submitted job inherits OMP_NUM_THREADS=1)
    seed: int
    train: TrainConfig
    intermediate: IntermediateSpec | None = None  # full fine-tune only
    tracking: WorkerTracking | None = None  # the run's experiment trackers: rank 0 logs each step's metrics there

    @property
    def full_finetune(self) -> bool:
        return self.train_layers == "all"

    def resume_identity(self) -> dict:
        """What must match for a re-run to continue this run's checkpoints (threads do not change results)."""
        return self.model_dump(exclude={"threads": True, "tracking": True, "train": {"resume", "max_failures"}})


def train_loop_per_worker(config: dict) -> None:
    DistillLoop(LoopConfig.model_validate(config["loop"])).run()


class DistillLoop:
    def __init__(self, cfg: LoopConfig):
        import ray.train

        self.cfg, self.t = cfg, cfg.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.micro = 0
        self.logs = TrainLogs()

    # -- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        import ray.train.torch

        from mdistill.encode import load_sentence_transformer
        from mdistill.losses import embedding_loss
        from mdistill.models.split import FullStudent, TopStudent
        from mdistill.tracking.worker import StepLogger
        from mdistill.training.step import StateFeatures, TextFeatures, deepspeed_config, make_optimizer, steps_per_epoch

        cfg, t = self.cfg, self.t
        self.tracker = StepLogger(cfg.tracking, self.rank)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = ray.train.torch.get_device()
        self.use_ds = t.strategy == "deepspeed"
        dense = ckpt.load_linear(cfg.head_path) if cfg.head_path else None
        st = load_sentence_transformer(cfg.student_path, device="cpu", max_seq_length=cfg.max_seq_length)
        if cfg.full_finetune:
            self.student = FullStudent(st, dense=dense) if cfg.intermediate is None else self._layer_distilled(st, dense)
            self.features = TextFeatures(st.tokenizer, cfg.prompt, cfg.max_seq_length)
        else:
            self.student = TopStudent(st, cfg.train_layers, dense=dense)
            self.features = StateFeatures()
        self.student.set_dropout(cfg.dropout)
        self.student.train()

        self.micro_per_epoch = steps_per_epoch(cfg.train_rows // self.world, t.batch_size, t.bucket_rows)
        self.total_micro = self.micro_per_epoch * t.epochs
        if t.max_steps is not None:
            self.total_micro = min(self.total_micro, t.max_steps * t.grad_accum)
        self.total_steps = -(-self.total_micro // t.grad_accum)
        optimizer, scheduler = make_optimizer(
            self.student, lr=t.lr, head_lr=t.head_lr, weight_decay=t.weight_decay, total_steps=self.total_steps, warmup_ratio=t.warmup_ratio
        )
        self.loss_fn = embedding_loss(t.loss, contrastive_weight=t.contrastive_weight, contrastive_temperature=t.contrastive_temperature)
        if cfg.intermediate is not None:
            from mdistill.models.layer_distill import WithIntermediate

            self.loss_fn = WithIntermediate(self.loss_fn, self.student)
        self.dtype = None  # the inputs' dtype when the engine holds the model in another one (DeepSpeed bf16)
        if self.use_ds:
            import deepspeed

            if shutil.which(os.environ.get("CXX", "c++")) is None:  # the shm allreduce op is JIT-built with g++
                deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
            bf16 = self.device.type == "cuda"
            self.student.to(self.device)
            self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=self.student,
                optimizer=optimizer,
                lr_scheduler=scheduler,
                config=deepspeed_config(
                    batch_size=t.batch_size, grad_accum=t.grad_accum, world_size=self.world, zero_stage=t.zero_stage,
                    max_grad_norm=t.max_grad_norm, bf16=bf16,
                ),
            )  # fmt: skip
            ckpt.weights_only_deepspeed(self.model)
            self.dtype = torch.bfloat16 if bf16 else None
        else:
            self.model = ray.train.torch.prepare_model(self.student)  # DDP; moves to this worker's GPU when use_gpu
            self.optimizer, self.scheduler = optimizer, scheduler
        # DDP on GPU: bf16 autocast around the forward (DeepSpeed casts the model itself)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" and not self.use_ds else nullcontext()
        dev = pq.read_table(cfg.dev_dir) if cfg.dev_dir else None
        self.dev = dev if dev is not None and dev.num_rows else None
        heldout = pq.read_table(cfg.heldout_dir) if cfg.heldout_dir else None
        self.heldout = heldout if heldout is not None and heldout.num_rows else None

    def _layer_distilled(self, st, dense):
        """The whole student + the frozen teacher it learns the layers of (``models.layer_distill``)."""
        from mdistill.encode import load_sentence_transformer
        from mdistill.models.layer_distill import LayerDistilledStudent, token_id_map

        spec = self.cfg.intermediate
        teacher = load_sentence_transformer(spec.teacher_path, device="cpu")
        return LayerDistilledStudent(
            st, teacher[0].auto_model, token_id_map(st.tokenizer, teacher.tokenizer), hidden_weight=spec.hidden_weight,
            attention_weight=spec.attention_weight, relation_heads=spec.relation_heads, layer_map=spec.layer_map, dense=dense,
        )  # fmt: skip

    # -- resume ---------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from the latest checkpoint of a restarted worker group or of a stopped run."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return
        with checkpoint.as_directory() as d:
            state = ckpt.read_state(d)
            if self.use_ds:
                self.model.load_checkpoint(d, tag=ckpt.DS_TAG)
            else:
                self.student.load_state_dict(ckpt.read_weights(d))
                ckpt.read_optimizer(d, self.optimizer, self.scheduler)
        self.micro, self.logs = state.micro, state.logs
        step = self.step
        self.logs.resumed_at.append(step)
        if self.rank == 0:
            log.info("resumed at step %d/%d (micro-batch %d) from %s", step, self.total_steps, self.micro, checkpoint.path)

    @property
    def step(self) -> int:
        return -(-self.micro // self.t.grad_accum)

    # -- one epoch ------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) from wherever ``self.micro`` stands in it."""
        import ray.train

        from mdistill.training.step import bucketed_batches, deepspeed_step, to_device, train_step

        t, start = self.t, epoch * self.micro_per_epoch
        skip = self.micro - start
        rng = random.Random(f"{self.cfg.seed}-{self.rank}-{epoch}")  # the same batch order when an epoch is resumed
        losses: list[float] = []
        seen, t0 = 0, time.time()
        chunks = ray.train.get_dataset_shard("train").iter_batches(batch_size=t.bucket_rows, batch_format="pyarrow")
        first_batch_s = None
        for i, batch in enumerate(bucketed_batches(chunks, t.batch_size, rng, self.features)):
            if first_batch_s is None:  # the rate is the training loop's; the pipeline's start-up is logged apart
                first_batch_s, t0 = time.time() - t0, time.time()
            if self.micro >= self.total_micro:
                break  # train.max_steps reached mid-epoch (every rank stops at the same step)
            if i < skip or self.micro >= start + self.micro_per_epoch:
                continue  # done before the restart / a surplus batch (the shard split is equal, so rarely)
            batch = to_device(batch, self.device, self.dtype)
            self.micro += 1
            boundary = self.micro % t.grad_accum == 0 or self.micro == self.total_micro
            if self.use_ds:
                loss = deepspeed_step(self.model, self.loss_fn, batch)
            else:
                sync = boundary or self.world == 1
                with self.autocast, self.model.no_sync() if not sync and hasattr(self.model, "no_sync") else nullcontext():
                    loss = train_step(
                        self.model,
                        self.loss_fn,
                        self.optimizer,
                        self.scheduler,
                        batch,
                        t.max_grad_norm,
                        accum=t.grad_accum,
                        boundary=boundary,
                    )
            losses.append(loss)
            seen += len(batch[0])
            if not boundary:
                continue
            step = self.step
            if step % t.log_every == 0:
                recent = losses[-t.log_every * t.grad_accum :]
                lr = self.scheduler.get_last_lr()[0]
                self.logs.steps.append(StepRecord(step=step, epoch=epoch + 1, loss=sum(recent) / len(recent), lr=lr))
                self.tracker.log({"loss": self.logs.steps[-1].loss, "lr": lr}, step)
                if self.rank == 0:
                    rate = seen * self.world / max(1e-9, time.time() - t0)
                    log.info(
                        "epoch %d/%d step %d/%d loss %.5f lr %.2e %.0f samples/s", epoch + 1, t.epochs, step, self.total_steps,
                        self.logs.steps[-1].loss, lr, rate,
                    )  # fmt: skip
            epoch_end = self.micro % self.micro_per_epoch == 0 or self.micro == self.total_micro  # the last, maybe partial, epoch
            dev_due = self.dev is not None and (epoch_end if t.dev_every is None else step % t.dev_every == 0)
            ckpt_due = epoch_end or (t.checkpoint_every is not None and step % t.checkpoint_every == 0)
            metrics = {"epoch": epoch + 1, "step": step, "loss": sum(losses) / len(losses), "elapsed_s": time.time() - t0}
            if dev_due:
                dm = self.dev_metrics()
                self.logs.dev.append(
                    DevRecord(
                        step=step, pooled_teacher_space_top1=dm["dev_pooled_teacher_space_top1"], pooled_mse100=dm["dev_pooled_mse100"],
                        heldout_pooled_teacher_space_top1=dm.get("heldout_pooled_teacher_space_top1"),
                        heldout_pooled_mse100=dm.get("heldout_pooled_mse100"),
                    )
                )  # fmt: skip
                metrics.update(dm)
                self.tracker.log(dm, step)
            if epoch_end:
                rec = EpochRecord(
                    epoch=epoch + 1, step=step, loss=metrics["loss"], elapsed_s=metrics["elapsed_s"],
                    samples_per_s=seen * self.world / max(1e-9, time.time() - t0), first_batch_s=first_batch_s or 0.0,
                    loss_fn=type(self.loss_fn).__name__,
                )  # fmt: skip
                self.logs.history.append(rec)
                metrics["samples_per_s"] = rec.samples_per_s
                self.tracker.log({"epoch": epoch + 1, "samples_per_s": rec.samples_per_s}, step)
            if ckpt_due or self.micro == self.total_micro:
                self.save_and_report(metrics, final=self.micro == self.total_micro)
            elif dev_due:
                ray.train.report(metrics)
        if self.micro < min(self.total_micro, start + self.micro_per_epoch):
            raise RuntimeError(
                f"rank {self.rank}: the train shard gave {self.micro - start} batches in epoch {epoch + 1}, expected {self.micro_per_epoch}"
            )

    def dev_vectors(self, rows):
        from mdistill.training.step import embed_rows

        return embed_rows(self.model, rows, self.features, device=self.device, dtype=self.dtype)

    def dev_metrics(self) -> dict[str, float]:
        from mdistill.training.step import pooled_dev_metrics

        out = {}
        for prefix, rows in (("dev", self.dev), ("heldout", self.heldout)):
            if rows is not None:
                rows = rows.slice(0, self.cfg.max_dev_rows)
                out.update(pooled_dev_metrics(self.dev_vectors(rows), rows, prefix=prefix))
        return out

    def eval_rows(self):
        """Every row the run evaluates on: dev, then held-out."""
        import pyarrow as pa

        return pa.concat_tables([t for t in (self.dev, self.heldout) if t is not None])

    # -- save and report ------------------------------------------------------------------------

    def save_and_report(self, metrics: dict, final: bool = False) -> None:
        """Every rank saves what it owns (DeepSpeed: its optimizer partition), a barrier, then every
        rank reports; the final checkpoint also holds the dev vectors the run evaluates."""
        import ray.train

        from mdistill.teacher.cache import embeddings_table

        weights = self._full_state()  # ZeRO-3: a collective gather, every rank takes part
        rows = self.eval_rows() if final and self.dev is not None else None
        dev_vectors = self.dev_vectors(rows) if rows is not None else None  # collective under ZeRO-3 too
        with tempfile.TemporaryDirectory() as d:
            if self.use_ds:
                self.model.save_checkpoint(d, tag=ckpt.DS_TAG)
            if self.rank == 0:
                ckpt.write_weights(d, weights)
                ckpt.write_state(d, ckpt.TrainState(micro=self.micro, final=final, logs=self.logs))
                if not self.use_ds:
                    ckpt.write_optimizer(d, self.optimizer, self.scheduler)
                if dev_vectors is not None:
                    pq.write_table(embeddings_table(rows.column("key").to_pylist(), dev_vectors), os.path.join(d, ckpt.DEV_VECTORS))
            if self.world > 1:
                torch.distributed.barrier()
            has_files = self.use_ds or self.rank == 0
            metrics = {**metrics, "micro": self.micro}
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if has_files else None)

    def _full_state(self) -> dict[str, torch.Tensor]:
        """Full trained weights. DDP and ZeRO-1/2 keep full parameters on every rank; ZeRO-3
        partitions them, so they are gathered first."""

        def copy() -> dict[str, torch.Tensor]:
            return {k: v.detach().float().cpu().clone() for k, v in self.student.state_dict().items()}

        if self.use_ds and self.t.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.student.parameters()), modifier_rank=None):
                return copy()
        return copy()

    # -- the whole loop -------------------------------------------------------------------------

    def record_nodes(self) -> None:
        """Where each rank runs (the report shows how the workers spread over the nodes)."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        nodes = [node] * self.world
        if self.world > 1:
            torch.distributed.all_gather_object(nodes, node)
        self.logs.worker_nodes = nodes
        if self.rank == 0:
            log.info("workers on nodes %s", ", ".join(f"rank {r}: {n[:8]}" for r, n in enumerate(nodes)))

    def run(self) -> None:
        self.setup()
        self.resume()
        self.record_nodes()
        if self.micro >= self.total_micro:  # a finished run re-run: report its final checkpoint again
            last = self.logs.history[-1] if self.logs.history else None
            self.save_and_report(last.model_dump() if last else {}, final=True)
            return
        for epoch in range(self.micro // self.micro_per_epoch, self.t.epochs):
            if self.micro >= self.total_micro:
                break
            self.train_epoch(epoch)
