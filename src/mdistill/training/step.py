"""Training kernels without Ray: length-bucketed batches, the LR schedule, the optimizer, the
DeepSpeed config, one optimizer step and the dev metrics. The Ray Train loop
(``training/loop.py``) strings them together; benchmarks call them directly."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch

from mdistill.models.split import pad_states
from mdistill.teacher.cache import embedding_matrix


def decode_states(table: pa.Table) -> list[np.ndarray]:
    """``hidden`` (float16 bytes) + ``length`` + ``dim`` columns -> [tokens, dim] arrays."""
    dim = table.column("dim")[0].as_py()
    return [
        np.frombuffer(b, dtype=np.float16).reshape(n, dim)
        for b, n in zip(table.column("hidden").to_pylist(), table.column("length").to_pylist())
    ]


def bucketed_batches(
    chunks: Iterable[pa.Table], batch_size: int, rng: random.Random
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Within each chunk, sort rows by length, cut into batches, shuffle the batch order.

    Batches then pad little while memory stays bounded by one chunk. Every worker sees chunks of
    the same sizes (an equal split), so every worker takes the same number of steps.
    """
    for chunk in chunks:
        states = decode_states(chunk)
        targets = torch.tensor(embedding_matrix(chunk.column("target")))  # a copy: Arrow memory is read-only
        order = sorted(range(len(states)), key=lambda i: (states[i].shape[0], rng.random()))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        rng.shuffle(batches)
        for b in batches:
            x, m = pad_states([states[i] for i in b])
            yield x, m, targets[b]


def steps_per_epoch(rows: int, batch_size: int, chunk_rows: int) -> int:
    full, rem = divmod(rows, chunk_rows)
    return full * math.ceil(chunk_rows / batch_size) + math.ceil(rem / batch_size)


def warmup_linear(total_steps: int, warmup_ratio: float):
    warm = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return factor


def make_optimizer(top, *, lr: float, head_lr: float | None, weight_decay: float, total_steps: int, warmup_ratio: float):
    """AdamW over the trained layers (``lr``) and the Dense head (``head_lr``), warm-up + linear decay.

    A torch optimizer, also under DeepSpeed: a DeepSpeed-config optimizer JIT-compiles
    ``fused_adam`` on first use (~90 s on CPU) for no gain at this size."""
    groups = [{"params": list(top.layers.parameters()), "lr": lr}]
    if top.dense is not None:
        groups.append({"params": list(top.dense.parameters()), "lr": head_lr or lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total_steps, warmup_ratio))


def deepspeed_config(*, batch_size: int, grad_accum: int, world_size: int, zero_stage: int, max_grad_norm: float, bf16: bool) -> dict:
    """The DeepSpeed config of a run: ZeRO stage, accumulation, clipping, bf16 on GPU (fp32 on CPU)."""
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": batch_size * grad_accum * world_size,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,  # mdistill logs itself
        "wall_clock_breakdown": False,
    }


def train_step(model, loss_fn, optimizer, scheduler, batch, max_grad_norm: float, *, accum: int = 1, boundary: bool = True) -> float:
    """One micro-batch of plain PyTorch / DDP training; the optimizer steps on ``boundary``.

    With gradient accumulation the loss is divided by ``accum`` so the summed gradient is the
    mean over the accumulated micro-batches (what DeepSpeed does too)."""
    x, m, y = batch
    loss = loss_fn(model(x, m), y)
    (loss / accum).backward()
    if boundary:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def deepspeed_step(engine, loss_fn, batch) -> float:
    """One micro-batch under DeepSpeed: the engine scales for accumulation, clips, and steps the
    optimizer and LR scheduler at accumulation boundaries."""
    x, m, y = batch
    loss = loss_fn(engine(x, m), y)
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


@torch.no_grad()
def dev_metrics(model, dev: pa.Table, batch_size: int = 128, device: str | torch.device = "cpu") -> dict[str, float]:
    """Teacher-space top-1 (is each translation's nearest teacher vector, among the dev English
    sources, its own source's?) and MSE x 100 to the teacher over every dev row. ``dev`` has the
    ``hidden``, ``length``, ``dim``, ``target``, ``en`` and ``lang`` columns of the states files."""
    from mdistill.evaluation.metrics import mse100

    was_training = model.training
    model.eval()
    states = decode_states(dev)
    vecs: np.ndarray | None = None
    order = np.argsort([s.shape[0] for s in states], kind="stable")
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        x, m = pad_states([states[i] for i in idx])
        v = model(x.to(device), m.to(device)).float().cpu().numpy()
        if vecs is None:
            vecs = np.empty((len(states), v.shape[1]), np.float32)
        vecs[idx] = v
    model.train(was_training)
    targets = embedding_matrix(dev.column("target"))
    en, lang = dev.column("en").to_pylist(), dev.column("lang").to_pylist()
    first: dict[str, int] = {}
    for i, e in enumerate(en):
        first.setdefault(e, i)
    sources = list(first)  # one teacher vector per English source
    keys = targets[[first[e] for e in sources]]
    keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    q = [i for i, lg in enumerate(lang) if lg != "en"]
    answer = {e: j for j, e in enumerate(sources)}
    hits = (vecs[q] @ keys.T).argmax(1) == np.array([answer[en[i]] for i in q]) if q else np.array([np.nan])
    return {"dev_teacher_space_top1": float(hits.mean()), "dev_mse100": mse100(vecs, targets)}
