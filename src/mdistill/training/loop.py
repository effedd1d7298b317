"""The Ray Train worker loop: stream cached frozen-student states + teacher vectors from the
dataset shard and train the student's top layers and Dense head with the distillation loss.

Strategies: DDP (``prepare_model``) or DeepSpeed ZeRO 1/2/3 (``deepspeed.initialize`` on the
process group Ray Train set up: gloo on CPU, nccl on GPU). Checkpoints every
``checkpoint_every`` optimizer steps through ``ray.train.report(checkpoint=...)``; a restarted
worker group (``FailureConfig``) or a re-run of a stopped run resumes from the latest one.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from contextlib import nullcontext

import torch

CKPT_FILE = "top_student.pt"  # full trained weights + logs: what the run exports
DS_TAG = "deepspeed"  # DeepSpeed's own checkpoint (partitioned optimizer state) under this tag


def train_loop_per_worker(cfg: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    from mdistill.encode import load_sentence_transformer
    from mdistill.losses import CosineLoss, MSELoss
    from mdistill.models.split import TopStudent
    from mdistill.training.step import (
        bucketed_batches,
        deepspeed_config,
        deepspeed_step,
        dev_metrics,
        make_optimizer,
        steps_per_epoch,
        train_step,
    )

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg["threads"])  # a submitted job inherits OMP_NUM_THREADS=1
    torch.manual_seed(cfg["seed"])
    device = ray.train.torch.get_device()
    use_ds = cfg["strategy"] == "deepspeed"
    accum = cfg["grad_accum"]

    st = load_sentence_transformer(cfg["student_path"], device="cpu")
    dense = torch.load(cfg["dense_path"], weights_only=False) if cfg.get("dense_path") else None
    top = TopStudent(st, cfg["train_layers"], dense=dense)
    top.set_dropout(cfg["dropout"])
    top.train()

    micro_per_epoch = steps_per_epoch(cfg["train_rows"] // world, cfg["batch_size"], cfg["bucket_rows"])
    total_micro = micro_per_epoch * cfg["epochs"]
    total_steps = -(-total_micro // accum)
    optimizer, scheduler = make_optimizer(
        top,
        lr=cfg["lr"],
        head_lr=cfg["head_lr"],
        weight_decay=cfg["weight_decay"],
        total_steps=total_steps,
        warmup_ratio=cfg["warmup_ratio"],
    )
    loss_fn = CosineLoss() if cfg["loss"] == "cosine" else MSELoss()

    if use_ds:
        import deepspeed

        if not _have_compiler():  # the shared-memory allreduce op is JIT-built with g++; plain gloo otherwise
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        top.to(device)
        model, optimizer, _, scheduler = deepspeed.initialize(
            model=top,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(
                batch_size=cfg["batch_size"],
                grad_accum=accum,
                world_size=world,
                zero_stage=cfg["zero_stage"],
                max_grad_norm=cfg["max_grad_norm"],
                bf16=device.type == "cuda",
            ),
        )
    else:
        model = ray.train.torch.prepare_model(top)  # DDP; moves to this worker's GPU when use_gpu

    # Resume: a restarted worker group or a re-run of a stopped run continues from the latest checkpoint.
    micro, logs = 0, {"history": [], "steps": [], "dev": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            saved = torch.load(os.path.join(d, CKPT_FILE), weights_only=False, map_location="cpu")
            if use_ds:
                model.load_checkpoint(d, tag=DS_TAG)
            else:
                top.layers.load_state_dict(saved["layers"])
                if top.dense is not None:
                    top.dense.load_state_dict(saved["dense"].state_dict())
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
        micro, logs = saved["micro"], saved["logs"]
        logs.setdefault("resumed_at", []).append(micro)
        if rank == 0:
            print(f"[train] resumed at micro-batch {micro}/{total_micro} from {checkpoint.path}", flush=True)

    dev = ray.get(cfg["dev"]) if cfg.get("dev") is not None else None  # every rank: ZeRO-3 forwards are collective
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and not use_ds else nullcontext()

    def save_and_report(metrics: dict, final: bool = False) -> None:
        """Every rank saves what it owns (DeepSpeed: its optimizer partition), a barrier, then every rank reports."""
        metrics = {**metrics, "micro": micro}
        layers, dense_state = _full_state(top, use_ds and cfg["zero_stage"] == 3)  # ZeRO-3: a collective gather
        with tempfile.TemporaryDirectory() as d:
            if use_ds:
                model.save_checkpoint(d, tag=DS_TAG)
            if rank == 0:
                torch.save(
                    {
                        "layers": layers,
                        "dense": _linear(dense_state),
                        "optimizer": None if use_ds else optimizer.state_dict(),
                        "scheduler": None if use_ds else scheduler.state_dict(),
                        "micro": micro,
                        "logs": logs,
                        "final": final,
                    },
                    os.path.join(d, CKPT_FILE),
                )
            if world > 1:
                torch.distributed.barrier()
            has_files = use_ds or rank == 0
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if has_files else None)

    if micro >= total_micro:  # a finished run re-run: report its final checkpoint again
        save_and_report(logs["history"][-1] if logs["history"] else {}, final=True)
        return

    t0 = time.time()
    every = cfg["checkpoint_every"]
    while micro < total_micro:
        epoch, skip = divmod(micro, micro_per_epoch)
        rng = random.Random(f"{cfg['seed']}-{rank}-{epoch}")  # same batch order when an epoch is resumed
        losses, seen, te = [], 0, time.time()
        chunks = shard_iter(ray.train.get_dataset_shard("train"), cfg["bucket_rows"])
        for i, batch in enumerate(bucketed_batches(chunks, cfg["batch_size"], rng)):
            if i == 0:  # the rate is the training loop's; the pipeline's start-up is logged apart
                first_batch_s, te = time.time() - te, time.time()
            if i < skip or micro >= (epoch + 1) * micro_per_epoch:
                continue  # done before the restart / a surplus batch (the shard split is equal, so rarely)
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            micro += 1
            boundary = micro % accum == 0 or micro == total_micro
            if use_ds:
                loss = deepspeed_step(model, loss_fn, batch)
            else:
                with autocast:
                    sync = boundary or world == 1
                    with model.no_sync() if not sync and hasattr(model, "no_sync") else nullcontext():  # accumulate locally
                        loss = train_step(model, loss_fn, optimizer, scheduler, batch, cfg["max_grad_norm"], accum=accum, boundary=boundary)
            losses.append(loss)
            seen += len(batch[0])
            step = -(-micro // accum)
            if boundary and step % cfg["log_every"] == 0:
                recent = losses[-cfg["log_every"] * accum :]
                logs["steps"].append(
                    {"step": step, "epoch": epoch + 1, "loss": sum(recent) / len(recent), "lr": scheduler.get_last_lr()[0]}
                )
                if rank == 0:
                    rate = seen * world / max(1e-9, time.time() - te)
                    print(
                        f"[train] epoch {epoch + 1}/{cfg['epochs']} step {step}/{total_steps} loss {logs['steps'][-1]['loss']:.5f} "
                        f"lr {scheduler.get_last_lr()[0]:.2e} {rate:.0f} samples/s",
                        flush=True,
                    )
            epoch_end = micro % micro_per_epoch == 0
            dev_due = dev is not None and boundary and (epoch_end if cfg["dev_every"] is None else step % cfg["dev_every"] == 0)
            ckpt_due = boundary and (epoch_end if every is None else step % every == 0 or epoch_end)
            metrics = {"epoch": epoch + 1, "step": step, "loss": sum(losses) / len(losses), "elapsed_s": time.time() - t0}
            if dev_due:
                dm = dev_metrics(model, dev, device=device)
                logs["dev"].append({"step": step, **dm})
                metrics.update(dm)
            if epoch_end:
                metrics["samples_per_s"] = seen * world / max(1e-9, time.time() - te)
                metrics["first_batch_s"] = first_batch_s
                metrics["loss_fn"] = type(loss_fn).__name__
                logs["history"].append(metrics)
            if ckpt_due or micro == total_micro:
                save_and_report(metrics, final=micro == total_micro)
            elif dev_due:
                ray.train.report(metrics)
        if micro < min(total_micro, (epoch + 1) * micro_per_epoch):
            raise RuntimeError(
                f"rank {rank}: the train shard gave {micro - epoch * micro_per_epoch} batches in epoch {epoch + 1}, expected {micro_per_epoch}"
            )


def shard_iter(shard, rows: int):
    return shard.iter_batches(batch_size=rows, batch_format="pyarrow")


def _full_state(top, partitioned: bool) -> tuple[dict, dict | None]:
    """Full weights of the trained layers and the Dense head. DDP and ZeRO-1/2 keep full
    parameters on every rank; ZeRO-3 partitions them, so they are gathered first (a collective:
    every rank calls this)."""

    def copy() -> tuple[dict, dict | None]:
        layers = {k: v.detach().cpu().clone() for k, v in top.layers.state_dict().items()}
        dense = None if top.dense is None else {k: v.detach().cpu().clone() for k, v in top.dense.state_dict().items()}
        return layers, dense

    if partitioned:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(top.parameters()), modifier_rank=None):
            return copy()
    return copy()


def _linear(state: dict | None) -> torch.nn.Linear | None:
    if state is None:
        return None
    out, inp = state["weight"].shape
    lin = torch.nn.Linear(inp, out)
    lin.load_state_dict(state)
    return lin


def _have_compiler() -> bool:
    import shutil

    return shutil.which(os.environ.get("CXX", "c++")) is not None
