"""The Ray Train worker loop: stream cached frozen-student states + teacher vectors from the
dataset shard, train the student's top layers and Dense head with the distillation loss."""

from __future__ import annotations

import os
import random
import tempfile
import time

import torch


def train_loop_per_worker(cfg: dict) -> None:
    import ray.train
    import ray.train.torch

    from mdistill.encode import load_sentence_transformer
    from mdistill.losses import CosineLoss, MSELoss
    from mdistill.models.split import TopStudent
    from mdistill.training.step import bucketed_batches, steps_per_epoch, train_step, warmup_linear

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg["threads"])  # a submitted job inherits OMP_NUM_THREADS=1
    torch.manual_seed(cfg["seed"])
    rng = random.Random(cfg["seed"] * 1000 + rank)

    st = load_sentence_transformer(cfg["student_path"], device="cpu")
    dense = torch.load(cfg["dense_path"], weights_only=False) if cfg.get("dense_path") else None
    top = TopStudent(st, cfg["train_layers"], dense=dense)
    top.set_dropout(cfg["dropout"])
    top.train()
    model = ray.train.torch.prepare_model(top)  # DDP; moves to this worker's GPU when use_gpu
    device = ray.train.torch.get_device()

    head = list(top.dense.parameters()) if top.dense is not None else []
    groups = [{"params": list(top.layers.parameters()), "lr": cfg["lr"]}]
    if head:
        groups.append({"params": head, "lr": cfg["head_lr"] or cfg["lr"]})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg["weight_decay"])
    rows = cfg["train_rows"] // world
    per_epoch = steps_per_epoch(rows, cfg["batch_size"], cfg["bucket_rows"])
    total = per_epoch * cfg["epochs"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total, cfg["warmup_ratio"]))
    loss_fn = CosineLoss() if cfg.get("loss") == "cosine" else MSELoss()

    shard = ray.train.get_dataset_shard("train")
    step, t0, history = 0, time.time(), []
    for epoch in range(cfg["epochs"]):
        losses, seen, te = [], 0, time.time()
        chunks = shard.iter_batches(batch_size=cfg["bucket_rows"], batch_format="pyarrow")
        for batch in bucketed_batches(chunks, cfg["batch_size"], rng):
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            losses.append(train_step(model, loss_fn, optimizer, scheduler, batch, cfg["max_grad_norm"]))
            seen += len(batch[0])
            step += 1
            if rank == 0 and (step % cfg["log_every"] == 0 or step == total):
                rate = seen * world / max(1e-9, time.time() - te)
                print(
                    f"[train] epoch {epoch + 1}/{cfg['epochs']} step {step}/{total} loss {sum(losses[-cfg['log_every'] :]) / len(losses[-cfg['log_every'] :]):.5f} lr {scheduler.get_last_lr()[0]:.2e} {rate:.0f} samples/s",
                    flush=True,
                )
        metrics = {
            "epoch": epoch + 1,
            "step": step,
            "loss": sum(losses) / max(1, len(losses)),
            "loss_fn": type(loss_fn).__name__,
            "samples_per_s": seen * world / max(1e-9, time.time() - te),
            "elapsed_s": time.time() - t0,
        }
        history.append(metrics)
        last = epoch == cfg["epochs"] - 1
        if last and rank == 0:
            with tempfile.TemporaryDirectory() as d:
                top.cpu()
                torch.save({"layers": top.layers.state_dict(), "dense": top.dense, "history": history}, os.path.join(d, "top_student.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
